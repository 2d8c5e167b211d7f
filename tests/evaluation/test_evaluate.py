"""Evaluation, result records, resume after interruption, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import benchmark.evaluation.plan as plan_module
import benchmark.evaluation.results as results_module
from benchmark.errors import DefenseOutputError, OutputPathError
from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.loop import evaluate
from benchmark.evaluation.results import RESULT_SCHEMA, decode_bits, read_outcomes, read_record
from benchmark.evaluation.stats import wilson_interval
from benchmark.models.defense import Defense
from tests.conftest import NoisyModel, requires_fashion

pytestmark = requires_fashion
WHITE_BOX = ["fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd", "pgd_margin"]


def _evaluate(defense, tmp_path, name="r.json", **kwargs):
    kwargs.setdefault("batch_size", 100)
    kwargs.setdefault("families", ("white_box",))
    return evaluate(defense, "fashion-mnist", budget="quick", out=tmp_path / name, progress=False,
                    entry=EntryInfo(name="mlp", architecture="test-mlp"), **kwargs)


@pytest.fixture(scope="module")
def quick_result(trained_mlp, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("quick")
    result = _evaluate(Defense(trained_mlp, 10, name="mlp"), out_dir)
    return result, out_dir / "r.json"


def test_record_has_the_schema_and_numbers_as_numbers(quick_result):
    result, path = quick_result
    record = read_record(path)
    assert record == json.loads(json.dumps(result.record))
    assert record["schema"] == RESULT_SCHEMA
    assert record["n"] == 500 and record["budget"] == "quick" and record["seed"] == 0
    assert len(record["spec"]["sha256"]) == 64 and len(record["subset_sha256"]) == 64
    assert list(record["attacks"]) == WHITE_BOX
    assert list(record["diagnostics"]) == ["pgd_unbounded"]
    for measurement in [record["clean"], *record["attacks"].values()]:
        assert isinstance(measurement["accuracy"], float)
        assert isinstance(measurement["correct"], int)
        low, high = measurement["interval"]
        assert low <= measurement["accuracy"] <= high
        assert (low, high) == pytest.approx(wilson_interval(measurement["correct"], 500))
        assert measurement["forward_passes"] > 0 and measurement["seconds"] >= 0
    assert record["attacks"]["pgd"]["backward_passes"] == 500 * 40
    assert record["attacks"]["pgd"]["params"] == {"label": "true", "steps": 40, "step_size": 0.00625,
                                                  "random_start": True}
    provenance = record["provenance"]
    assert provenance["torch"] == torch.__version__ and provenance["device"] == "cpu"
    assert provenance["dtype"] == "float32" and provenance["total_seconds"] > 0
    assert provenance["precision"] == "float32" and provenance["processes"] == 1


def test_the_record_accounts_for_what_the_evaluation_cost(quick_result):
    record = quick_result[0].record
    costs = record["costs"]
    measurements = [record["clean"], *record["attacks"].values(), *record["diagnostics"].values()]
    assert costs["forward_passes"] == sum(m["forward_passes"] for m in measurements)
    assert costs["backward_passes"] == sum(m["backward_passes"] for m in measurements) >= 500 * 40
    assert set(costs["seconds_by_family"]) == {"clean", "white_box", "diagnostic"}
    assert costs["seconds"] == pytest.approx(sum(costs["seconds_by_family"].values()), abs=1e-2)
    assert costs["queries"] == 0, "no NAttack in this evaluation"
    assert costs["processes"] == 1 and costs["device_name"].startswith("cpu")
    assert costs["wall_seconds"] >= costs["seconds"] - 0.01, "one process: compute time fits in wall time"


def test_families_not_run_are_recorded_as_such_never_as_numbers(quick_result):
    record = quick_result[0].record
    assert record["families"]["transfer"]["status"] == "not_run"
    assert record["families"]["adaptive"]["status"] == "not_run"
    assert record["worst_case"]["transfer"] is None and record["worst_case"]["adaptive"] is None
    assert record["worst_case"]["all"] is None
    assert record["flags"]["transfer_beats_white_box"]["raised"] is None
    assert record["flags"]["nattack_beats_white_box"]["raised"] is None
    assert record["flags"]["pgd_unbounded_not_zero"]["raised"] is False


def test_worst_case_is_per_example_and_below_every_attack(quick_result):
    result, path = quick_result
    outcomes = read_outcomes(path)
    assert set(outcomes) == {"clean", *WHITE_BOX, "pgd_unbounded"}
    for name in WHITE_BOX:
        assert outcomes[name].correct.sum() == result.record["attacks"][name]["correct"]
    expected = np.logical_and.reduce([outcomes[name].correct[0] for name in ["clean", *WHITE_BOX]])
    worst = result.record["worst_case"]["white_box"]
    assert worst["correct"] == int(expected.sum())
    assert worst["accuracy"] <= min(a["accuracy"] for a in result.record["attacks"].values())
    assert result.accuracy("pgd") < result.clean_accuracy


def test_same_seed_gives_identical_outcomes(trained_mlp, quick_result, tmp_path):
    again = _evaluate(Defense(trained_mlp, 10, name="mlp"), tmp_path)
    for name, outcomes in quick_result[0].outcomes.items():
        assert np.array_equal(outcomes.correct, again.outcomes[name].correct), name


class _InterruptingAttacks:
    """Counts attack calls per name; raises KeyboardInterrupt at one call, like a Ctrl-C."""

    def __init__(self, interrupt_at: tuple[str, int] | None = None):
        self.calls: dict[str, int] = {}
        self.interrupt_at = interrupt_at
        self.original = plan_module.run_white_box

    def __call__(self, name, *args, **kwargs):
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.interrupt_at == (name, self.calls[name]):
            raise KeyboardInterrupt
        return self.original(name, *args, **kwargs)


def test_interrupted_evaluation_resumes_without_recomputing(trained_mlp, quick_result, tmp_path, monkeypatch):
    defense = Defense(trained_mlp, 10, name="mlp")
    interrupting = _InterruptingAttacks(interrupt_at=("pgd", 3))
    monkeypatch.setattr(plan_module, "run_white_box", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(defense, tmp_path, checkpoint_seconds=0.0)
    assert not (tmp_path / "r.json").exists()
    assert (tmp_path / ".r.state.json").exists()

    counting = _InterruptingAttacks()
    monkeypatch.setattr(plan_module, "run_white_box", counting)
    resumed = _evaluate(defense, tmp_path, checkpoint_seconds=0.0)
    assert counting.calls == {"pgd": 4, "pgd_margin": 5}, "finished attacks and pgd's two finished batches " \
        "are reused (3 batches of pgd remain, then pgd_margin's 5, then the one batch of the eps = 1 diagnostic)"
    for name, outcomes in quick_result[0].outcomes.items():
        assert np.array_equal(outcomes.correct, resumed.outcomes[name].correct), name
    assert not (tmp_path / ".r.state.json").exists()


def test_a_committed_checkpoint_resumes_on_another_machine(trained_mlp, quick_result, tmp_path, monkeypatch):
    """The checkpoint in --checkpoint-dir is all a fresh clone needs: copied elsewhere (a new machine
    with another working directory), the same evaluation resumes from it."""
    import shutil

    defense = Defense(trained_mlp, 10, name="mlp")
    first, second = tmp_path / "machine-1", tmp_path / "machine-2"
    first.mkdir()
    monkeypatch.setattr(plan_module, "run_white_box", _InterruptingAttacks(interrupt_at=("pgd_margin", 2)))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(defense, first, checkpoint_seconds=0.0, checkpoint_dir=first / "in-progress")
    assert (first / "in-progress" / "r.state.json").is_file() and not (first / ".r.state.json").exists()
    shutil.copytree(first / "in-progress", second / "in-progress")   # what `git clone` brings back

    counting = _InterruptingAttacks()
    monkeypatch.setattr(plan_module, "run_white_box", counting)
    resumed = _evaluate(defense, second, checkpoint_seconds=0.0, checkpoint_dir=second / "in-progress")
    assert counting.calls == {"pgd_margin": 4, "pgd": 1}, "pgd_margin's 4 unfinished batches, then the " \
        "eps = 1 diagnostic (a pgd); every finished measurement comes from the copied checkpoint"
    for name, outcomes in quick_result[0].outcomes.items():
        assert np.array_equal(outcomes.correct, resumed.outcomes[name].correct), name
    assert not (second / "in-progress" / "r.state.json").exists(), "a finished record drops its checkpoint"


def test_a_state_from_another_configuration_is_not_reused(trained_mlp, tmp_path, monkeypatch):
    defense = Defense(trained_mlp, 10, name="mlp")
    monkeypatch.setattr(plan_module, "run_white_box", _InterruptingAttacks(("ifgsm", 1)))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(defense, tmp_path, checkpoint_seconds=0.0)
    counting = _InterruptingAttacks()
    monkeypatch.setattr(plan_module, "run_white_box", counting)
    _evaluate(defense, tmp_path, seed=1, checkpoint_seconds=0.0)   # another seed: start afresh
    assert counting.calls["fgsm"] == 5


def test_interrupted_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    results_module.atomic_write_json(path, {"old": 1})

    def failing_replace(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(results_module.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        results_module.atomic_write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"], "no temporary file is left behind"


def test_output_under_a_file_fails_before_any_work(trained_mlp, tmp_path, monkeypatch):
    counting = _InterruptingAttacks()
    monkeypatch.setattr(plan_module, "run_white_box", counting)
    (tmp_path / "results").write_text("a file, not a folder")
    with pytest.raises(OutputPathError, match="a file is in the way"):
        evaluate(Defense(trained_mlp, 10), "fashion-mnist", out=tmp_path / "results" / "r.json",
                 progress=False)
    assert counting.calls == {}


def test_the_cli_creates_the_output_folder(tmp_path):
    """The README's `--out results/my_model.json` works on a fresh machine: the folder is created."""
    from benchmark.evaluation.results import check_output_path

    assert check_output_path(tmp_path / "results" / "deeper" / "my_model.json").parent.is_dir()


def test_undeclared_randomness_is_detected_and_attacked_with_eot(trained_mlp, tmp_path):
    noisy = Defense(NoisyModel(trained_mlp, 0.05), 10, randomized=False, name="noisy")
    result = _evaluate(noisy, tmp_path)
    record = result.record
    assert record["randomness"] == {"declared": False, "detected": True, "attacked_as_randomized": True,
                                    "prediction_repeats": 5}
    assert list(record["attacks"]) == ["fgsm", "step_ll", "rand_fgsm", "ifgsm", "epgd", "epgd_margin"]
    assert record["attacks"]["epgd"]["backward_passes"] == 500 * 40 * 8
    assert record["attacks"]["fgsm"]["backward_passes"] == 500 * 8, "EOT on every gradient"
    assert record["clean"]["repeats"] == 5 and record["clean"]["forward_passes"] == 5 * 500
    spread = record["attacks"]["epgd"]["spread"]
    assert spread["min"] <= record["attacks"]["epgd"]["accuracy"] <= spread["max"]
    assert record["flags"]["randomness_undeclared"]["raised"] is True
    assert result.outcomes["clean"].correct.shape == (5, 500)


class _ConstantModel(nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x):
        return self.output(x)


@pytest.mark.parametrize("output, message", [
    (lambda x: torch.zeros(x.shape[0], 7), r"expected \(\d+, 10\)"),
    (lambda x: torch.full((x.shape[0], 10), float("nan")), "NaN or inf"),
    (lambda x: torch.full((x.shape[0], 10), float("inf")), "NaN or inf"),
])
def test_a_bad_model_output_is_a_clear_error(output, message, tmp_path):
    with pytest.raises(DefenseOutputError, match=message):
        _evaluate(Defense(_ConstantModel(output), 10), tmp_path)


def test_a_defense_for_another_number_of_classes_is_refused(trained_mlp, tmp_path):
    with pytest.raises(DefenseOutputError, match="100 classes"):
        _evaluate(Defense(nn.Sequential(nn.Flatten(), nn.Linear(784, 100)), 100), tmp_path)


def test_bitmask_round_trip():
    values = np.random.default_rng(0).random(37) > 0.5
    assert np.array_equal(decode_bits(results_module.encode_bits(values), 37), values)


class _UnnormalizedScores(Defense):
    """A randomized defense that returns vote counts instead of a distribution."""

    def scores(self, x):
        return 8 * super().scores(x)


def test_randomized_scores_that_do_not_sum_to_one_are_refused(trained_mlp, tmp_path):
    defense = _UnnormalizedScores(NoisyModel(trained_mlp, 0.05), 10, randomized=True, name="votes")
    with pytest.raises(DefenseOutputError, match="row sums range from 8"):
        _evaluate(defense, tmp_path)


def test_randomized_results_do_not_depend_on_the_batch_size(trained_mlp, tmp_path):
    """Randomized entries run in the spec's fixed batches: another --batch-size changes nothing."""
    from tests.attacks.test_transfer import small_spec

    spec = small_spec(n=60, nattack_n=8, nattack_max_iterations=2)   # two fixed batches: 50 and 10
    noisy = Defense(NoisyModel(trained_mlp, 0.05), 10, randomized=True, name="noisy")
    records = [evaluate(noisy, "fashion-mnist", budget="quick", spec=spec, out=tmp_path / f"r{size}.json",
                        progress=False, batch_size=size, families=("white_box", "adaptive"))
               for size in (32, 60)]
    first, second = (read_outcomes(tmp_path / f"r{size}.json") for size in (32, 60))
    assert set(first) == set(second)
    for name in first:
        assert np.array_equal(first[name].correct, second[name].correct), name
    assert records[0].record["provenance"]["batch_size"] == spec.randomized.batch_size
