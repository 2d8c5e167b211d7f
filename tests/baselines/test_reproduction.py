"""The reproduction page: claims judged from records with 95% intervals, rendered deterministically."""

from __future__ import annotations

import pytest
import torch

from baselines.reproduction import (
    DIRECTION_ONLY,
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    claim_ensemble_transfer,
    claim_label_leaking,
    claim_rand_fgsm,
    claim_smoothing,
    claim_white_box_vs_transfer,
    render_page,
)
from benchmark.evaluation.stats import wilson_interval
from tests.conftest import requires_fashion

N = 500


def summary(accuracy: float, n: int = N) -> dict:
    correct = round(accuracy * n)
    return {"accuracy": correct / n, "correct": correct, "n": n, "interval": list(wilson_interval(correct, n))}


def record(name: str, clean: float, **attacks: float) -> dict:
    return {
        "entry": {"name": name, "architecture": "mnist_a", "weights": {"sha256": "f" * 64},
                  "recipe": {"file": f"fashion-mnist/{name}.toml", "epoch": 6}},
        "n": N, "subset_sha256": "e" * 64, "spec": {"version": "1.0.0"}, "threat_model": {"eps": 0.1},
        "provenance": {"device": "cpu", "device_name": None},
        "clean": summary(clean),
        "attacks": {name.replace("__", "/"): summary(value) for name, value in attacks.items()},
    }


def masked_records() -> dict[str, dict]:
    return {
        "A": record("A", 0.90, fgsm=0.20, rand_fgsm=0.10, transfer__B__fgsm=0.40),
        "A_adv": record("A_adv", 0.85, fgsm=0.80, rand_fgsm=0.30, transfer__B__fgsm=0.45,
                        transfer__B__ifgsm=0.50, transfer__B__rand_fgsm=0.60),
        "A_adv-ens": record("A_adv-ens", 0.85, fgsm=0.60, rand_fgsm=0.40, transfer__B__fgsm=0.70,
                            transfer__B__ifgsm=0.72, transfer__B__rand_fgsm=0.75),
    }


def test_gradient_masking_claim_reproduces_when_white_box_fgsm_is_clearly_higher():
    outcome = claim_white_box_vs_transfer(masked_records())
    assert outcome.verdict == REPRODUCED
    assert outcome.rows[0][0] == "A_adv" and "80.0 [" in outcome.rows[0][1]


def test_a_claim_that_does_not_hold_is_reported_with_its_numbers():
    records = masked_records()
    records["A_adv"]["attacks"]["fgsm"] = summary(0.30)
    outcome = claim_white_box_vs_transfer(records)
    assert outcome.verdict == NOT_REPRODUCED
    assert "30.0" in outcome.rows[0][1] and "45.0" in outcome.rows[0][2]


def test_overlapping_intervals_are_only_the_same_direction():
    records = masked_records()
    records["A_adv"]["attacks"]["fgsm"] = summary(0.47)
    assert claim_white_box_vs_transfer(records).verdict == DIRECTION_ONLY


def test_rand_fgsm_claim_needs_the_largest_gap_on_a_adv():
    outcome = claim_rand_fgsm(masked_records())
    assert outcome.verdict == REPRODUCED            # gaps: A 10, A_adv 50, A_adv-ens 20 points
    records = masked_records()
    records["A_adv-ens"]["attacks"]["rand_fgsm"] = summary(0.05)
    outcome = claim_rand_fgsm(records)
    assert outcome.verdict != REPRODUCED and "largest gap is on A_adv-ens" in outcome.explanation


def test_rand_fgsm_claim_counts_a_longer_trained_a_adv_as_a_adv():
    records = masked_records()
    records["A_adv@12"] = record("A_adv@12", 0.85, fgsm=0.85, rand_fgsm=0.20)   # gap 65 > A_adv's 50
    outcome = claim_rand_fgsm(records)
    assert outcome.verdict == REPRODUCED and "largest gap is on A_adv@12" in outcome.explanation
    records["A_adv-ens"]["attacks"]["rand_fgsm"] = summary(0.0)                 # gap 60 > A_adv's 50
    records["A_adv@12"]["attacks"]["rand_fgsm"] = summary(0.60)
    assert claim_rand_fgsm(records).verdict != REPRODUCED


def test_ensemble_claim_counts_unmeasured_epochs():
    outcome = claim_ensemble_transfer(masked_records())
    assert [row[-1] for row in outcome.rows] == [REPRODUCED] * 3 + [NOT_MEASURED] * 3
    assert outcome.verdict == f"{REPRODUCED} where measured (3 of 6 comparisons not yet)"
    assert "3 not measured" in outcome.explanation


def test_label_leaking_compares_true_label_fgsm_with_clean():
    records = {"A_adv-true-label": record("A_adv-true-label", 0.80, fgsm=0.90)}
    assert claim_label_leaking(records).verdict == REPRODUCED
    records = {"A_adv-true-label": record("A_adv-true-label", 0.80, fgsm=0.70)}
    assert claim_label_leaking(records).verdict == NOT_REPRODUCED
    assert claim_label_leaking({}).verdict == NOT_MEASURED


def sweep(values: dict[str, list[float]]) -> dict:
    samples = [1, 4, 16]
    return {"n": N, "smoothing": {"sigma": 0.0, "vote": "prediction", "samples": samples},
            "accuracy": {name: {str(m): summary(v) for m, v in zip(samples, values[name], strict=True)}
                         for name in values}}


def test_smoothing_claim_compares_the_largest_m_with_one_draw():
    rising = sweep({"clean": [0.70, 0.80, 0.85], "pgd": [0.20, 0.30, 0.35], "epgd": [0.10, 0.20, 0.25]})
    assert claim_smoothing({"A_pni": rising}).verdict == REPRODUCED
    flat = sweep({"clean": [0.80, 0.80, 0.80], "pgd": [0.30, 0.30, 0.30], "epgd": [0.2, 0.2, 0.2]})
    assert claim_smoothing({"A_pni": flat}).verdict == NOT_REPRODUCED


def test_the_smoothing_claim_explains_itself_by_how_often_all_draws_agree():
    flat = sweep({"clean": [0.80, 0.80, 0.80], "pgd": [0.30, 0.30, 0.30], "epgd": [0.2, 0.2, 0.2]})
    assert "agree" not in claim_smoothing({"A_pni": flat}).explanation    # older records: no count
    for name, count in (("clean", 485), ("pgd", 450), ("epgd", 440)):
        flat["accuracy"][name]["16"]["unanimous"] = count
    explanation = claim_smoothing({"A_pni": flat}).explanation
    assert "all draws agree on A_pni: 97% of clean, 90% of pgd, 88% of epgd inputs." in explanation


def test_the_page_is_deterministic_and_names_budget_and_verdicts():
    records = masked_records()
    first = render_page("fashion-mnist", "quick", records, {})
    assert first == render_page("fashion-mnist", "quick", dict(reversed(records.items())), {})
    assert "Budget: **quick** (n = 500" in first
    assert "| (a) A_adv is far more robust" in first and f"**{REPRODUCED}**" in first
    assert f"**{NOT_MEASURED}**" in first                   # no label-leak or smoothing records


def test_the_budget_line_names_an_entry_judged_on_a_smaller_subset():
    records = masked_records()
    records["A_adv-ens"] = dict(records["A_adv-ens"], n=120, subset_sha256="d" * 64)
    page = render_page("fashion-mnist", "standard", records, {})
    assert "(n = 500 test images, the spec's fixed subset `eeeeeeeeeeee`; A_adv-ens: n = 120, " \
           "subset `dddddddddddd`)" in page


@requires_fashion
def test_the_smoothing_sweep_measures_every_m_on_clean_pgd_and_epgd(tmp_path):
    from benchmark.board.sweeps import smoothing_sweep
    from benchmark.models.architectures import build
    from benchmark.spec import load_spec

    torch.manual_seed(0)
    model = build("pni:mnist_d", 10)
    out = tmp_path / "sweep.json"
    result = smoothing_sweep(model, dataset="fashion-mnist", spec=load_spec(), sigma=0.05,
                             vote="prediction", samples=[1, 3], n=20, entry={"name": "tiny"}, out=out,
                             batch_size=10, progress=False)
    assert out.is_file()
    assert set(result["accuracy"]) == {"clean", "pgd", "epgd"}
    for cells in result["accuracy"].values():
        assert set(cells) == {"1", "3"}
        assert cells["1"]["unanimous"] == 20            # one draw always agrees with itself
        assert 0 <= cells["3"]["unanimous"] <= 20
        for cell in cells.values():
            low, high = cell["interval"]
            assert low <= cell["accuracy"] <= high and cell["correct"] == round(cell["accuracy"] * 20)
    # 2 batches x (PGD 40 steps + EPGD 40 steps x 8 draws) input gradients of 10 images each
    assert result["provenance"]["backward_passes"] == 2 * 10 * (40 + 40 * 8)


@pytest.mark.parametrize("model", ["A_adv@12", "A_adv-true-label"])
def test_the_plan_names_models_outside_the_zoo_by_recipe_and_epoch(model):
    from baselines.reproduction import FASHION_PLAN

    planned = {m.name: m for m in FASHION_PLAN}[model]
    assert planned.zoo_entry is None and planned.recipe.startswith("fashion-mnist/")


def test_rand_fgsm_weaker_everywhere_is_not_reproduced_even_if_least_weak_on_a_adv():
    records = {"A": record("A", 0.9, fgsm=0.15, rand_fgsm=0.26),
               "A_adv": record("A_adv", 0.85, fgsm=0.66, rand_fgsm=0.75)}
    outcome = claim_rand_fgsm(records)
    assert outcome.verdict == NOT_REPRODUCED
    assert "weaker than FGSM on all 2 models" in outcome.explanation


def _write_record(path, *, sha256: str, version: str, families: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"entry": {"name": "A", "weights": {"sha256": sha256}}, "spec": {"version": version},
                                "families": families}))


def test_evaluate_plan_keeps_a_zoo_record_and_measures_only_what_it_lacks(tmp_path, monkeypatch):
    """The zoo entries' records are the leaderboard's: the reproduction never re-measures or narrows
    them, and adds a missing family to the families already run."""
    import baselines.reproduction as reproduction
    import benchmark.evaluation.loop as loop
    from baselines.zoo import load_zoo
    from benchmark.spec import load_spec

    zoo_sha = load_zoo("fashion-mnist").entry("A").sha256
    version = load_spec().version
    monkeypatch.setattr(reproduction, "LEADERBOARD_DIR", tmp_path)
    planned = reproduction.PlannedModel("A", zoo_entry="A")
    monkeypatch.setitem(reproduction.PLANS, "fashion-mnist", ((planned,), ()))
    monkeypatch.setitem(reproduction.PROBES, "fashion-mnist", ())
    calls = []
    monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: calls.append(kwargs["families"]))
    monkeypatch.setattr(reproduction, "_planned_defense", lambda *args: (None, None))
    record = tmp_path / "results" / "fashion-mnist" / "A-quick.json"
    run = {"status": "run"}

    _write_record(record, sha256=zoo_sha, version=version,
                  families={"white_box": run, "transfer": run, "adaptive": run})
    reproduction.evaluate_plan("fashion-mnist", budget="quick", device="cpu", log=lambda line: None)
    assert calls == []                                            # complete: not measured again

    _write_record(record, sha256=zoo_sha, version=version,
                  families={"white_box": run, "transfer": {"status": "not_run"}, "adaptive": run})
    reproduction.evaluate_plan("fashion-mnist", budget="quick", device="cpu", log=lambda line: None)
    assert calls == [("white_box", "transfer", "adaptive")]       # adds transfer, keeps the rest

    for sha, spec_version in (("0" * 64, version), (zoo_sha, "1.0.0")):   # other weights, older spec
        calls.clear()
        _write_record(record, sha256=sha, version=spec_version, families={"white_box": run, "transfer": run})
        reproduction.evaluate_plan("fashion-mnist", budget="quick", device="cpu", log=lambda line: None)
        assert calls == [("white_box", "transfer")]
