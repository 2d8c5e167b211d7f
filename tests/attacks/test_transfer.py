"""The transfer family: only the spec's held-out sources, cached crafting, correct invalidation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import benchmark.evaluation.batch_sizes as batch_sizes_module
import benchmark.evaluation.plan as plan_module
from benchmark.attacks.sources import SOURCES_DIR, load_held_out_sources
from benchmark.attacks.transfer import TransferCache, TransferSource
from benchmark.cli import main
from benchmark.errors import ThreatbenchError
from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.loop import evaluate
from benchmark.models.defense import Defense, WeightsError
from benchmark.spec import HeldOutSource, load_spec
from tests.conftest import requires_fashion

pytestmark = requires_fashion


def small_spec(spec=None, **budget):
    """The packaged spec with a smaller quick budget, to keep tests fast."""
    spec = spec or load_spec()
    dataset = spec.dataset("fashion-mnist")
    quick = dataclasses.replace(dataset.budgets["quick"], **{"n": 200, "nattack_n": 20,
                                                               "nattack_max_iterations": 20, **budget})
    return spec.with_budget("fashion-mnist", quick)


def _transfer_only(defense, tmp_path, spec, **kwargs):
    return evaluate(defense, "fashion-mnist", budget="quick", spec=spec, out=tmp_path / "r.json",
                    progress=False, families=("white_box", "transfer"), **kwargs)


def test_the_spec_pins_a_real_held_out_source_for_fashion_mnist():
    dataset = load_spec().dataset("fashion-mnist")
    (source,) = dataset.held_out_sources
    assert source.architecture == "mnist_b" and source.architecture not in dataset.static_models
    loaded, reason = load_held_out_sources(dataset, torch.device("cpu"))
    assert reason == "" and loaded[0].sha256 == source.sha256
    assert (SOURCES_DIR / source.weights).stat().st_size < 5_000_000


def test_held_out_source_is_an_accurate_model(fashion_test_batch):
    (source,), _ = load_held_out_sources(load_spec().dataset("fashion-mnist"), torch.device("cpu"))
    x, y = fashion_test_batch
    assert (source.defense.predict(x) == y).float().mean() > 0.8


def test_transfer_uses_only_the_spec_sources_and_caches_their_examples(trained_mlp, tmp_path, monkeypatch):
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path / "cache"))
    spec = small_spec()
    first = _transfer_only(Defense(trained_mlp, 10), tmp_path, spec).record
    assert [s["name"] for s in first["families"]["transfer"]["sources"]] == ["B"]
    names = [n for n, a in first["attacks"].items() if a["family"] == "transfer"]
    assert names == ["transfer/B/fgsm", "transfer/B/rand_fgsm", "transfer/B/ifgsm", "transfer/B/pgd"]
    assert first["provenance"]["transfer_cache"]["chunk_misses"] == 4
    assert first["attacks"]["transfer/B/pgd"]["accuracy"] < first["clean"]["accuracy"] - 0.1

    other_target = Defense(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), 10, name="linear")
    second = _transfer_only(other_target, tmp_path, spec).record
    assert second["provenance"]["transfer_cache"] == {"chunk_hits": 4, "chunk_misses": 0,
                                                     "crafting_seconds": 0.0}

    reseeded = _transfer_only(other_target, tmp_path, spec, seed=7).record
    assert reseeded["provenance"]["transfer_cache"]["chunk_misses"] == 4, "another seed, other examples"
    respecced = _transfer_only(other_target, tmp_path, dataclasses.replace(spec, sha256="f" * 64)).record
    assert respecced["provenance"]["transfer_cache"]["chunk_misses"] == 4, "another spec, other examples"


def test_cache_key_depends_on_every_part():
    base = ("s" * 64, "w" * 64, "pgd", "d" * 64, 0)
    keys = {TransferCache.key(*base)}
    for i, changed in enumerate(["t" * 64, "v" * 64, "fgsm", "e" * 64, 1]):
        parts = list(base)
        parts[i] = changed
        keys.add(TransferCache.key(*parts))
    assert len(keys) == 6


def test_a_damaged_cache_file_is_recrafted(trained_mlp, tmp_path, monkeypatch):
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path / "cache"))
    spec = small_spec()
    _transfer_only(Defense(trained_mlp, 10), tmp_path, spec)
    for path in (tmp_path / "cache" / "transfer").rglob("*.safetensors"):
        path.write_bytes(b"garbage")
    record = _transfer_only(Defense(trained_mlp, 10), tmp_path, spec).record
    assert record["provenance"]["transfer_cache"]["chunk_misses"] == 4


def test_a_model_is_never_its_own_source(tmp_path):
    spec = small_spec()
    (source,), _ = load_held_out_sources(spec.dataset("fashion-mnist"), torch.device("cpu"))
    entry = EntryInfo(name="B itself", weights={"file": "B.safetensors", "sha256": source.sha256})
    record = _transfer_only(source.defense, tmp_path, spec, entry=entry).record
    assert record["families"]["transfer"]["status"] == "not_run"
    assert "itself" in record["families"]["transfer"]["reason"]


def test_a_source_with_another_number_of_classes_is_refused(trained_mlp, tmp_path):
    wrong = TransferSource("wide", Defense(nn.Sequential(nn.Flatten(), nn.Linear(784, 12)), 12), "a" * 64)
    with pytest.raises(ThreatbenchError, match="12 classes"):
        _transfer_only(Defense(trained_mlp, 10), tmp_path, small_spec(), sources=[wrong])


def _spec_with_source(source: HeldOutSource):
    spec = small_spec()
    dataset = dataclasses.replace(spec.dataset("fashion-mnist"), held_out_sources=(source,))
    return dataclasses.replace(spec, datasets={**spec.datasets, "fashion-mnist": dataset})


def test_a_source_with_the_wrong_hash_is_refused(trained_mlp, tmp_path):
    good = load_spec().dataset("fashion-mnist").held_out_sources[0]
    spec = _spec_with_source(dataclasses.replace(good, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256"):
        _transfer_only(Defense(trained_mlp, 10), tmp_path, spec)


def test_a_missing_source_file_is_a_clear_error(trained_mlp, tmp_path):
    good = load_spec().dataset("fashion-mnist").held_out_sources[0]
    spec = _spec_with_source(dataclasses.replace(good, weights="nope.safetensors"))
    with pytest.raises(ThreatbenchError, match="nope.safetensors is missing"):
        _transfer_only(Defense(trained_mlp, 10), tmp_path, spec)


def test_a_source_without_pinned_weights_leaves_the_family_not_run(trained_mlp, tmp_path):
    spec = _spec_with_source(HeldOutSource(name="B", architecture="mnist_b"))
    record = _transfer_only(Defense(trained_mlp, 10), tmp_path, spec).record
    assert record["families"]["transfer"]["status"] == "not_run"
    assert "pins no sha256" in record["families"]["transfer"]["reason"]
    assert record["worst_case"]["transfer"] is None


def test_nattack_interrupted_resumes_without_losing_examples(trained_mlp, tmp_path, monkeypatch):
    spec = small_spec(nattack_n=24)
    defense = Defense(trained_mlp, 10)
    kwargs = dict(budget="quick", spec=spec, out=tmp_path / "r.json", progress=False,
                  families=("adaptive",), checkpoint_seconds=0.0)
    monkeypatch.setattr(batch_sizes_module, "nattack_batch_size", lambda *a: 8)
    reference = evaluate(defense, "fashion-mnist", **{**kwargs, "out": tmp_path / "ref.json"})
    calls = []
    original = plan_module.nattack

    def interrupting(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(plan_module, "nattack", interrupting)
    with pytest.raises(KeyboardInterrupt):
        evaluate(defense, "fashion-mnist", **kwargs)
    calls.clear()
    monkeypatch.setattr(plan_module, "nattack", lambda *a, **kw: (calls.append(1), original(*a, **kw))[1])
    resumed = evaluate(defense, "fashion-mnist", **kwargs)
    assert len(calls) == 2, "the first batch of 8 images is not attacked again"
    assert (resumed.outcomes["nattack"].queries == reference.outcomes["nattack"].queries).all()
    assert (resumed.outcomes["nattack"].correct == reference.outcomes["nattack"].correct).all()
    assert resumed.record["attacks"]["nattack"]["queries"] == reference.record["attacks"]["nattack"]["queries"]


def test_transfer_matrix_prints_sources_by_targets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path / "cache"))
    b_weights = SOURCES_DIR / load_spec().dataset("fashion-mnist").held_out_sources[0].weights
    code = main(["transfer-matrix", "--dataset", "fashion-mnist", "--model", f"Bcopy=mnist_b@{b_weights}",
                 "--attack", "fgsm", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "fgsm error rates" in out and "Bcopy" in out and "B (held-out)" in out
    assert "chunk" in out
