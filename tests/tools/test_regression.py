"""The regression replay: exact for deterministic entries, fails on a perturbed record, skips with
the missing resource named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from records import rederive

from benchmark.evaluation.results import decode_bits, encode_bits, examples_path, read_outcomes
from benchmark.tools import regression
from benchmark.tools.regression import MissingResource, compare, regression_cases
from tests.conftest import requires_fashion

RESULTS = Path(__file__).resolve().parents[2] / "leaderboard" / "results"
D_RECORD = RESULTS / "fashion-mnist" / "D-standard.json"


@pytest.fixture
def d_copy(tmp_path) -> Path:
    if not D_RECORD.is_file():
        pytest.skip(f"{D_RECORD} is not committed (threatbench run --entries D --budget standard --out-dir leaderboard/results)")
    target = tmp_path / "results" / "fashion-mnist" / D_RECORD.name
    target.parent.mkdir(parents=True)
    shutil.copy(D_RECORD, target)
    shutil.copy(examples_path(D_RECORD), examples_path(target))
    regression.replay.cache_clear()
    return target


def test_case_ids_name_dataset_entry_and_measurement():
    ids = [case.test_id for case in regression_cases(RESULTS)]
    assert "fashion_mnist-D-pgd" in ids and "fashion_mnist-D-transfer_B_fgsm" in ids and "fashion_mnist-D-nattack" in ids
    assert all(i.startswith(("fashion_mnist-", "imagenet-", "cifar10-", "cifar100-", "mnist-")) for i in ids)


@requires_fashion
def test_a_committed_deterministic_record_replays_exactly(d_copy):
    compare(d_copy, "pgd")
    compare(d_copy, "clean")


@requires_fashion
def test_a_perturbed_record_fails_its_regression(d_copy, monkeypatch):
    """One fgsm bit changed among the replayed examples, every number re-derived to match (so the
    record loads): the replay of the model catches it. (The sample is keyed by the file, which the
    forgery changes: the test keeps the first file's sample.)"""
    sample = regression.regression_sample(d_copy, 3000, regression.REGRESSION_N)
    examples = json.loads(examples_path(d_copy).read_text())
    entry = examples["measurements"]["fgsm"]
    bits = decode_bits(entry["bits"][0], entry["n"])
    changed = int(sample[3])
    bits[changed] = not bits[changed]
    entry["bits"][0] = encode_bits(bits)
    examples_path(d_copy).write_text(json.dumps(examples))
    rederive(d_copy)
    monkeypatch.setattr(regression, "regression_sample", lambda *args: sample)
    with pytest.raises(AssertionError, match=rf"examples \[{changed}\] \(by index in the evaluation subset\) of "
                                             "the 40 replayed changed outcome"):
        compare(d_copy, "fgsm")


def test_the_replayed_sample_is_uniform_and_keyed_by_the_record_file(d_copy):
    first = regression.regression_sample(d_copy, 3000, 40)
    assert len(first) == 40 and len(set(first.tolist())) == 40 and first.max() < 3000
    assert np.array_equal(first, regression.regression_sample(d_copy, 3000, 40)), "fixed for a given file"
    assert first.max() >= 40, "not the first examples"
    d_copy.write_text(d_copy.read_text() + "\n")   # another file, another sample
    assert not np.array_equal(first, regression.regression_sample(d_copy, 3000, 40))


def test_the_documented_chance_of_catching_changed_bits_is_the_formula():
    """docs/record-format.md quotes 1 - C(n - m, k) / C(n, k) at n = 3000, k = REGRESSION_N."""
    from math import comb

    page = (Path(__file__).resolve().parents[2] / "docs" / "record-format.md").read_text()
    assert f"k = {regression.REGRESSION_N}, randomized entries {regression.REGRESSION_N_RANDOMIZED}" in page
    for changed, shown in ((1, "1.3%"), (30, "33%"), (150, "87%"), (300, "98.6%")):
        chance = 1 - comb(3000 - changed, regression.REGRESSION_N) / comb(3000, regression.REGRESSION_N)
        assert f"{100 * chance:.{max(0, len(shown.split('.')[-1]) - 1) if '.' in shown else 0}f}%" == shown
        assert shown in page


def test_missing_weights_skip_with_their_sha256_named(d_copy):
    record = json.loads(d_copy.read_text())
    record["entry"]["weights"]["sha256"] = "0" * 64
    d_copy.write_text(json.dumps(record))
    with pytest.raises(MissingResource, match="weights with sha256 000000000000... are not in the repository"):
        compare(d_copy, "clean")


def test_a_gpu_record_skips_on_a_machine_without_one(d_copy, monkeypatch):
    record = json.loads(d_copy.read_text())
    record["provenance"]["device"] = "cuda"
    d_copy.write_text(json.dumps(record))
    monkeypatch.setattr(regression.torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingResource, match="measured on a GPU and this machine has none"):
        compare(d_copy, "clean")


@requires_fashion
def test_nattack_replays_on_the_examples_the_record_attacked(d_copy):
    record = json.loads(d_copy.read_text())
    assert record["attacks"]["nattack"]["cascade"]["attacked"] >= regression.REGRESSION_NATTACK_N
    compare(d_copy, "nattack")
    columns, _ = regression.replay(d_copy)["nattack"]
    attacked = np.flatnonzero(read_outcomes(d_copy)["nattack"].attacked)
    assert columns.tolist() == attacked[:regression.REGRESSION_NATTACK_N].tolist()


class _FirstReplay(Exception):
    pass


@pytest.mark.parametrize("entry, checked", [("D", True), ("A_pni", True), ("A_pni-smoothed", False)])
def test_replays_skip_the_admission_checks_of_smoothed_entries_only(entry, checked, monkeypatch):
    record = RESULTS / "fashion-mnist" / f"{entry}-standard.json"
    if not record.is_file():
        pytest.skip(f"{record} is not committed")
    asked = {}

    def first_replay(*args, **options):
        asked.update(options)
        raise _FirstReplay

    monkeypatch.setattr(regression, "_replay_evaluation", first_replay)
    regression.replay.cache_clear()
    with pytest.raises(_FirstReplay):
        regression.replay(record)
    regression.replay.cache_clear()
    assert asked["consistency_check"] is checked
