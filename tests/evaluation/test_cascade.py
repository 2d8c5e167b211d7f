"""The attack cascade: its seeded uniform subsample, the two-phase estimate of the ranking key, and an
evaluation whose per-example worst case is the same with and without the cascade."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from benchmark.evaluation.cascade import (
    adaptive_subsample,
    estimate_from_outcomes,
    survivors,
    two_phase_estimate,
)
from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.loop import evaluate
from benchmark.evaluation.record_check import load_record
from benchmark.evaluation.results import read_outcomes
from benchmark.models.defense import Defense
from benchmark.spec import load_spec
from tests.conftest import requires_fashion

Z_975 = 1.959963984540054      # the normal quantile at 0.975 (a 95% two-sided interval)
Z_9875 = 2.241402727604947     # at 0.9875: each factor's interval at 1 - alpha/2 = 97.5%


def wilson_by_hand(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# ---------------------------------------------------------------- the subsample


def test_the_subsample_is_fixed_by_the_seed_and_has_the_requested_size():
    first = adaptive_subsample(500, 50, seed=0)
    assert first.dtype == bool and first.shape == (500,) and first.sum() == 50
    assert np.array_equal(first, adaptive_subsample(500, 50, seed=0))
    assert not np.array_equal(first, adaptive_subsample(500, 50, seed=1))
    assert not np.array_equal(first, np.arange(500) < 50), "not the first examples"
    assert adaptive_subsample(40, 40, seed=3).all() and adaptive_subsample(40, 90, seed=3).all()
    assert not adaptive_subsample(40, 0, seed=3).any()


def test_the_subsample_is_uniform_within_the_evaluation_set():
    n, size, seeds = 20, 5, 4000
    draws = np.stack([adaptive_subsample(n, size, seed) for seed in range(seeds)])
    # Every example is chosen with probability size/n: a chi-square test over the 20 examples
    # (19 degrees of freedom; 43.8 is the 0.999 quantile).
    counts = draws.sum(axis=0)
    expected = seeds * size / n
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 43.8, f"inclusion counts {counts.tolist()} are not uniform (chi2 {chi_square:.1f})"
    # Pairs too (a uniform subset, not just uniform marginals): P(i and j) = s(s-1) / (n(n-1)).
    pair = float((draws[:, 0] & draws[:, 1]).mean())
    assert pair == pytest.approx(size * (size - 1) / (n * (n - 1)), abs=0.015)
    # Neighbours are not favoured: a subset of consecutive examples is as rare as any other.
    assert float((draws[:, :5].all(axis=1)).mean()) < 0.002


def test_survivors_are_examples_correct_in_at_least_one_repeat():
    prior = np.array([[1, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)
    assert survivors(prior).tolist() == [True, False, True, True]


# ---------------------------------------------------------------- the two-phase estimate


def test_the_two_phase_estimate_and_its_interval_match_hand_computed_values():
    # 300 of 1000 survive clean, white-box and transfer; 60 of the 200 sampled ones survive, and
    # NAttack breaks 15 of them.
    estimate = two_phase_estimate(prior_correct=300, n=1000, survivors=60, kept=45, subsample=200,
                                  confidence=0.95)
    assert estimate.method == "two-phase"
    assert estimate.p == 0.3 and estimate.q == 0.75
    assert estimate.accuracy == pytest.approx(0.225)
    p_low, p_high = wilson_by_hand(300, 1000, Z_9875)
    q_low, q_high = wilson_by_hand(45, 60, Z_9875)
    assert estimate.p_interval == pytest.approx((p_low, p_high), abs=1e-12)
    assert estimate.q_interval == pytest.approx((q_low, q_high), abs=1e-12)
    assert estimate.interval == pytest.approx((p_low * q_low, p_high * q_high), abs=1e-12)
    # Worked out by hand: p in [0.2686, 0.3334], q in [0.6088, 0.8526].
    assert estimate.interval == pytest.approx((0.1635, 0.2843), abs=5e-4)
    assert estimate.factor_confidence == 0.975


def test_over_the_whole_set_the_estimate_is_the_direct_worst_case():
    estimate = two_phase_estimate(prior_correct=300, n=1000, survivors=300, kept=240, subsample=1000,
                                  confidence=0.95)
    assert estimate.method == "direct"
    assert estimate.accuracy == 0.24
    assert estimate.interval == pytest.approx(wilson_by_hand(240, 1000, Z_975), abs=1e-12)


def test_no_survivor_in_the_subsample_leaves_q_unknown_not_zero():
    estimate = two_phase_estimate(prior_correct=10, n=1000, survivors=0, kept=0, subsample=100,
                                  confidence=0.95)
    assert estimate.q == 1.0 and estimate.q_interval == (0.0, 1.0)
    assert estimate.accuracy == 0.01
    assert estimate.interval[0] == 0.0 and estimate.interval[1] == pytest.approx(
        wilson_by_hand(10, 1000, Z_9875)[1], abs=1e-12)


def test_inconsistent_counts_are_refused():
    with pytest.raises(ValueError, match="inconsistent"):
        two_phase_estimate(prior_correct=10, n=100, survivors=20, kept=5, subsample=50, confidence=0.95)
    with pytest.raises(ValueError, match="inconsistent"):
        two_phase_estimate(prior_correct=10, n=100, survivors=5, kept=6, subsample=50, confidence=0.95)


def test_the_estimate_from_repeated_outcomes_uses_the_mean_over_repeats():
    # Two repeats of 6 examples; the subsample is examples 0-2.
    prior = np.array([[1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 0, 0]], dtype=bool)
    final = np.array([[1, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]], dtype=bool)
    subsample = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    estimate = estimate_from_outcomes(prior, final, subsample, 0.95)
    assert estimate.p == pytest.approx((4 + 2) / 2 / 6)          # 3 of 6 per repeat
    assert estimate.survivors == pytest.approx((2 + 1) / 2)      # on the subsample
    assert estimate.kept == pytest.approx((1 + 0) / 2)
    assert estimate.accuracy == pytest.approx(0.5 * (0.5 / 1.5))


# ---------------------------------------------------------------- an evaluation, with and without


def _small_spec(n: int, nattack_n: int, iterations: int):
    spec = load_spec()
    dataset = spec.dataset("fashion-mnist")
    budget = dataclasses.replace(dataset.budgets["quick"], n=n, nattack_n=nattack_n,
                                 nattack_max_iterations=iterations)
    return spec.with_budget("fashion-mnist", budget)


@pytest.fixture(scope="module")
def with_and_without(trained_mlp, tmp_path_factory):
    directory = tmp_path_factory.mktemp("cascade")
    spec = _small_spec(n=80, nattack_n=40, iterations=5)
    defense = Defense(trained_mlp, 10, name="mlp")
    results = {}
    for cascade in (True, False):
        path = directory / f"cascade-{cascade}.json"
        result = evaluate(defense, "fashion-mnist", budget="quick", spec=spec, out=path, progress=False,
                          cascade=cascade, entry=EntryInfo(name="mlp", architecture="test-mlp"))
        results[cascade] = result, read_outcomes(path)
    return results


@requires_fashion
def test_nattack_attacks_only_the_survivors_of_its_subsample(with_and_without):
    result, outcomes = with_and_without[True]
    nattack = outcomes["nattack"]
    assert np.array_equal(nattack.subsample, adaptive_subsample(80, 40, seed=0)), "read back from the file"
    earlier = ["clean", *(name for name, m in result.record["attacks"].items()
                          if m["family"] in ("white_box", "transfer"))]
    alive = np.logical_and.reduce([outcomes[name].correct[0] for name in earlier])
    assert np.array_equal(nattack.attacked, alive & nattack.subsample)
    assert (nattack.queries[~nattack.attacked] == 0).all() and (nattack.queries[nattack.attacked] > 0).all()
    cascade = result.record["attacks"]["nattack"]["cascade"]
    assert cascade["subsample"] == 40 and cascade["attacked"] == cascade["survivors"] == int(nattack.attacked.sum())
    assert result.record["attacks"]["nattack"]["n"] == cascade["attacked"]
    assert 0 < cascade["attacked"] < 40, "the fixture should leave NAttack some, not all, examples"


@requires_fashion
def test_the_cascade_leaves_every_per_example_worst_case_unchanged(with_and_without):
    (cascaded, cascaded_outcomes), (full, full_outcomes) = with_and_without[True], with_and_without[False]
    assert full_outcomes["nattack"].attacked.sum() == 40, "without the cascade NAttack attacks its whole subsample"

    def final(result, outcomes):
        names = ["clean", *result.record["worst_case"]["all"]["measurements"]]
        return np.logical_and.reduce([outcomes[name].correct[0] for name in names])

    subsample = cascaded_outcomes["nattack"].subsample
    assert np.array_equal(final(cascaded, cascaded_outcomes)[subsample], final(full, full_outcomes)[subsample])
    assert cascaded.record["worst_case"]["all"]["estimate"] == full.record["worst_case"]["all"]["estimate"]
    spent = {key: r.record["attacks"]["nattack"]["queries"]["total"] for key, (r, _) in with_and_without.items()}
    assert spent[True] < spent[False], f"the cascade spent {spent[True]} queries, without it {spent[False]}"


def test_a_cascaded_standard_record_is_ranked_with_its_sizes_and_what_nattack_broke(tmp_path):
    """A true standard record (tests/records.py: numbers derived from chosen bits) whose NAttack breaks
    some survivors: its ranked row shows the two-phase key, n, the subsample and what NAttack broke."""
    from records import write_true_record

    from benchmark.board.leaderboard import render_pages
    from benchmark.evaluation.record_check import load_record

    spec = load_spec()
    path = write_true_record(tmp_path, "mlp", clean=0.90, white_box=0.60, transfer=0.70, nattack=0.55)
    record = load_record(path)
    key = record["worst_case"]["all"]
    assert key["method"] == "two-phase" and key["n"] == 3000 and key["subsample"] == 500
    cascade = record["attacks"]["nattack"]["cascade"]
    assert cascade["broken"] > 0
    page = render_pages(tmp_path / "results", spec.version)["fashion-mnist.md"]
    ranked = page.split("## Ranked: the standard budget")[1].split("##")[0]
    row = next(line for line in ranked.splitlines() if line.startswith("| 1 |"))
    assert f"broke {cascade['broken']} of {cascade['survivors']} survivors" in row
    low, high = key["interval"]
    assert f"{100 * key['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}] | 3000 (500) |" in row
    assert f"| standard | {spec.version} |" in row


@requires_fashion
def test_each_stage_of_the_cascade_says_what_it_attacked_and_broke(with_and_without):
    result, outcomes = with_and_without[True]
    stages = {stage["family"]: stage for stage in result.record["cascade"]}
    assert list(stages) == ["clean", "white_box", "transfer", "adaptive"]
    clean = outcomes["clean"].correct[0]
    white_box = np.logical_and.reduce([outcomes[name].correct[0] for name, m in result.record["attacks"].items()
                                       if m["family"] == "white_box"])
    assert stages["clean"]["survivors"] == int(clean.sum())
    assert stages["white_box"]["broken"] == int((clean & ~white_box).sum())
    assert stages["transfer"]["survivors"] == result.record["attacks"]["nattack"]["cascade"]["survivors"] + int(
        (~outcomes["nattack"].subsample & np.logical_and.reduce(
            [outcomes[name].correct[0] for name in ["clean", *result.record["worst_case"]["all"]["measurements"]]
             if name != "nattack"])).sum())
    assert stages["adaptive"]["attacked"] == stages["adaptive"]["survivors_in_subsample"]
    assert stages["adaptive"]["survivors"] == stages["adaptive"]["survivors_in_subsample"] - stages["adaptive"]["broken"]


REPOSITORY = Path(__file__).resolve().parents[2]
CASCADED = REPOSITORY / "leaderboard" / "results" / "fashion-mnist" / "D-standard.json"
NOT_CASCADED = REPOSITORY / "leaderboard" / "diagnostics" / "cascade" / "no-cascade" / "D-standard.json"


def test_the_committed_record_and_its_no_cascade_twin_agree_per_example():
    """Stored evidence: zoo D at the standard budget, judged with the cascade (the leaderboard record)
    and without it (`--no-cascade`, NAttack on all 500 examples of the subsample). Every per-example
    worst case agrees, so does the ranking key, and the cascade spent fewer queries."""
    for path in (CASCADED, NOT_CASCADED):
        if not path.is_file():
            pytest.skip(f"{path.relative_to(REPOSITORY)} is not committed")
    records = {key: load_record(path) for key, path in (("cascade", CASCADED), ("full", NOT_CASCADED))}
    outcomes = {key: read_outcomes(path) for key, path in (("cascade", CASCADED), ("full", NOT_CASCADED))}
    assert records["cascade"]["attacks"]["nattack"]["params"]["cascade"] is True
    assert records["full"]["attacks"]["nattack"]["params"]["cascade"] is False
    subsample = outcomes["cascade"]["nattack"].subsample
    assert np.array_equal(subsample, outcomes["full"]["nattack"].subsample)
    assert np.array_equal(outcomes["full"]["nattack"].attacked, subsample)
    assert (outcomes["cascade"]["nattack"].attacked <= subsample).all()

    def final(key):
        names = ["clean", *records[key]["worst_case"]["all"]["measurements"]]
        return np.logical_and.reduce([outcomes[key][name].correct[0] for name in names])

    assert np.array_equal(final("cascade")[subsample], final("full")[subsample])
    assert records["cascade"]["worst_case"]["all"]["estimate"] == records["full"]["worst_case"]["all"]["estimate"]
    spent = {key: r["attacks"]["nattack"]["queries"]["total"] for key, r in records.items()}
    # The saving is what NAttack would spend on examples the other families already broke; on D they
    # fall to NAttack quickly too, so it is modest there (1.40M instead of 2.42M queries).
    assert spent["cascade"] < 0.6 * spent["full"], spent
