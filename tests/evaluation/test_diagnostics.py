"""The gradient-masking flags on hand-built records and per-example outcomes: every flag raised and
not raised, paired on the same examples with exact tests, randomized outcomes, and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.evaluation import diagnostics
from benchmark.evaluation.diagnostics import ALPHA, gradient_masking_flags, is_masking, register
from benchmark.evaluation.results import Outcomes
from benchmark.evaluation.stats import intervals_overlap, wilson_interval

N = 500
NATTACK_N = 50
WHITE_BOX = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd")
TRANSFER = ("transfer/B/fgsm", "transfer/B/rand_fgsm", "transfer/B/ifgsm", "transfer/B/pgd")


def first(correct: int, n: int = N) -> np.ndarray:
    """bool [1, n]: the first `correct` examples correct."""
    row = np.zeros((1, n), dtype=bool)
    row[0, :correct] = True
    return row


def broken(bits: np.ndarray, examples: range | list[int]) -> np.ndarray:
    """A copy of `bits` with `examples` misclassified in every repeat."""
    bits = bits.copy()
    bits[:, list(examples)] = False
    return bits


def family_of(name: str) -> str:
    if name.startswith("transfer/"):
        return "transfer"
    return "adaptive" if name == "nattack" else "white_box"


def build(bits: dict[str, np.ndarray], *, declared: bool = False, detected: bool = False,
          unbounded: np.ndarray | None = None, gradient: dict[str, dict] | None = None):
    """(record, outcomes) holding only what the flags read; `bits` maps measurement names
    ("clean" included) to bool [repeats, n] outcomes."""
    outcomes = {name: Outcomes(row) for name, row in bits.items()}
    attacks = {name: {"family": family_of(name), "accuracy": float(row.mean()), "params": {}}
               for name, row in bits.items() if name != "clean"}
    for name, counts in (gradient or {}).items():
        attacks[name]["gradient"] = counts
    diagnostics_ = {}
    if unbounded is not None:
        outcomes["pgd_unbounded"] = Outcomes(unbounded)
        diagnostics_["pgd_unbounded"] = {"family": "diagnostic", "params": {"eps": 1.0}}
    record = {"attacks": attacks, "diagnostics": diagnostics_, "n": N, "nattack_n": NATTACK_N,
              "randomness": {"declared": declared, "detected": detected}}
    return record, outcomes


def honest() -> dict[str, np.ndarray]:
    """Clean 90%; white-box attacks at least as strong as transfer and NAttack on every example."""
    bits = {"clean": first(450), "fgsm": first(300), "step_ll": first(400), "rand_fgsm": first(350),
            "ifgsm": first(250), "pgd": first(200)}
    bits.update({name: first(400) for name in TRANSFER})
    bits["nattack"] = first(NATTACK_N, NATTACK_N)
    return bits


def flags_of(bits: dict[str, np.ndarray], **kwargs) -> dict[str, dict]:
    return gradient_masking_flags(*build(bits, **kwargs))


# ---------------------------------------------------------------- schema and an honest defense


def test_an_honest_record_raises_nothing_and_every_flag_has_the_schema():
    flags = flags_of(honest(), unbounded=first(0, 100))
    assert list(flags) == [flag.name for flag in diagnostics.FLAGS]
    assert {name for name, flag in flags.items() if flag["raised"]} == set()
    for name, flag in flags.items():
        assert {"raised", "evidence", "p_value", "masking"} <= set(flag), name
        assert isinstance(flag["masking"], bool) and isinstance(flag["evidence"], str)
    assert flags["no_gradient"]["raised"] is None, "no attack recorded its gradients"
    assert flags["adversarial_above_clean"]["masking"] is False
    assert all(flags[name]["masking"] for name in flags if name != "adversarial_above_clean")


def test_paired_flags_record_their_discordant_counts():
    flag = flags_of(honest())["transfer_beats_white_box"]
    assert flag["raised"] is False and flag["p_value"] == 1.0
    assert flag["comparisons"] == 5   # the worst cases and four transfer attacks vs their counterparts
    assert len(flag["compared"]) == 2 and len(flag["discordant"]) == 2


def test_missing_families_leave_flags_not_evaluated():
    bits = {name: row for name, row in honest().items() if name in ("clean", *WHITE_BOX)}
    flags = flags_of(bits)
    for name in ("transfer_beats_white_box", "nattack_beats_white_box", "pgd_unbounded_not_zero"):
        assert flags[name]["raised"] is None and flags[name]["p_value"] is None, name
    assert flags["single_step_beats_pgd"]["raised"] is False


# ---------------------------------------------------------------- each paired flag


def test_transfer_worst_case_beating_white_box_is_raised():
    """Each transfer attack breaks 6 examples its white-box counterpart leaves correct and leaves 4
    correct that it breaks (not significant), but together they break 24 examples that white-box
    leaves correct, against 4 the other way."""
    bits = honest()
    for index, attack in enumerate(("pgd", "ifgsm", "fgsm", "rand_fgsm")):
        row = broken(bits[attack], range(6 * index, 6 * index + 6))
        correct = int(bits[attack].sum())
        row[0, correct:correct + 4] = True
        bits[f"transfer/B/{attack}"] = row
    flags = flags_of(bits)
    flag = flags["transfer_beats_white_box"]
    assert flag["raised"] is True
    assert flag["compared"] == ["white-box worst case", "transfer worst case"]
    assert flag["discordant"] == [24, 4]
    assert flag["p_value"] == pytest.approx(5 * 24158 / 2 ** 28)   # P(X >= 24 | 28), Bonferroni x 5
    assert "transfer/B/" not in flag["evidence"], "no single transfer attack beats its counterpart"


def test_one_transfer_attack_beating_its_counterpart_is_raised():
    bits = honest()
    bits["transfer/B/fgsm"] = first(280)   # fgsm leaves 0..299 correct
    flag = flags_of(bits)["transfer_beats_white_box"]
    assert flag["raised"] is True
    assert flag["compared"] == ["fgsm", "transfer/B/fgsm"] and flag["discordant"] == [20, 0]
    assert flag["p_value"] == pytest.approx(5 * 2.0 ** -20)   # Bonferroni over 5 comparisons


def test_transfer_pgd_is_compared_with_epgd_for_a_randomized_defense():
    bits = honest()
    bits["epgd"] = bits.pop("pgd")
    bits["transfer/B/pgd"] = broken(first(200), range(150, 170))
    flag = flags_of(bits)["transfer_beats_white_box"]
    assert flag["raised"] is True
    assert "epgd correct on 20 examples where transfer/B/pgd is not" in flag["evidence"]


def test_nattack_is_paired_on_its_own_examples_where_intervals_overlap():
    """500 examples, white-box worst case 40%, NAttack breaks 12 more of them: the unpaired Wilson
    intervals overlap (the old rule stayed silent), the paired test gives p = 2**-12."""
    bits = {"clean": first(450, 500), "pgd": first(200, 500), "nattack": broken(first(200, 500), range(12))}
    record, outcomes = build(bits)
    assert intervals_overlap(wilson_interval(200, 500), wilson_interval(188, 500))
    flag = gradient_masking_flags(record, outcomes)["nattack_beats_white_box"]
    assert flag["raised"] is True
    assert flag["p_value"] == 2.0 ** -12
    assert flag["discordant"] == [12, 0]
    assert flag["compared"] == ["white-box worst case", "adaptive worst case"]


def test_nattack_is_compared_only_on_the_first_nattack_n_examples():
    bits = honest()
    bits["nattack"] = first(NATTACK_N, NATTACK_N)   # NAttack breaks nothing among the first 50
    bits["pgd"] = broken(first(450), range(40, NATTACK_N))   # pgd breaks 10 of them ...
    bits["pgd"][0, 50:] = False                              # ... and everything beyond
    flag = flags_of(bits)["nattack_beats_white_box"]
    assert flag["raised"] is False and flag["discordant"] == [0, 10]
    bits["nattack"] = broken(first(NATTACK_N, NATTACK_N), range(10))
    bits["pgd"] = first(450)
    flag = flags_of(bits)["nattack_beats_white_box"]
    assert flag["raised"] is True and flag["discordant"] == [10, 0] and flag["p_value"] == 2.0 ** -10


def test_single_step_beating_every_iterative_attack_is_raised():
    bits = honest()
    bits["fgsm"] = first(188)   # pgd and ifgsm leave 0..199 correct
    flag = flags_of(bits)["single_step_beats_pgd"]
    assert flag["raised"] is True
    assert flag["compared"] == ["pgd & ifgsm", "fgsm"] and flag["discordant"] == [12, 0]
    assert flag["comparisons"] == 3 and flag["p_value"] == 3 * 2.0 ** -12


def test_single_step_breaking_other_examples_than_pgd_is_not_masking():
    bits = honest()
    bits["fgsm"] = broken(bits["fgsm"], range(0, 12))   # 12 only fgsm breaks, 100 only pgd breaks
    flag = flags_of(bits)["single_step_beats_pgd"]
    assert flag["raised"] is False and flag["discordant"] == [12, 100]


def test_single_step_is_compared_with_the_and_of_the_iterative_attacks():
    bits = honest()
    bits["fgsm"] = first(188)
    bits["ifgsm"] = first(188)   # ifgsm breaks 188..199 too: against pgd alone fgsm would be raised
    flag = flags_of(bits)["single_step_beats_pgd"]
    assert flag["raised"] is False and flag["discordant"] == [0, 0]


def test_margin_pgd_counts_among_the_iterative_attacks():
    bits = honest()
    bits["fgsm"] = first(188)
    bits["pgd_margin"] = first(188)
    flag = flags_of(bits)["single_step_beats_pgd"]
    assert flag["raised"] is False
    assert flag["compared"][0] == "pgd & pgd_margin & ifgsm"


def test_rand_fgsm_beating_fgsm_is_raised():
    bits = honest()
    assert flags_of(bits)["rand_fgsm_beats_fgsm"]["raised"] is False
    bits["rand_fgsm"] = first(280)   # fgsm leaves 300 correct
    flag = flags_of(bits)["rand_fgsm_beats_fgsm"]
    assert flag["raised"] is True and flag["discordant"] == [20, 0] and flag["p_value"] == 2.0 ** -20


def test_label_leaking_is_raised_but_is_not_a_masking_flag():
    bits = honest()
    bits["step_ll"] = first(470)   # 20 examples misclassified clean are correct under step_ll
    flag = flags_of(bits)["adversarial_above_clean"]
    assert flag["raised"] is True and flag["masking"] is False
    assert flag["compared"] == ["step_ll", "clean"] and flag["discordant"] == [20, 0]
    assert flag["evidence"].startswith("label leaking")


# ---------------------------------------------------------------- randomized outcomes


def randomized(bits: dict[str, np.ndarray], repeats: int = 5) -> dict[str, np.ndarray]:
    return {name: np.repeat(row, repeats, axis=0) for name, row in bits.items()}


def test_randomized_outcomes_compare_fractions_over_repeats():
    bits = randomized(honest())
    bits["epgd"] = bits.pop("pgd")
    bits["transfer/B/pgd"] = broken(first(200).repeat(5, axis=0), range(100, 112))
    # 10 more examples, correct in 2 of 5 repeats under epgd and in 2 other repeats under transfer:
    # bit by bit they differ, in fraction they do not, so they are not discordant.
    for example in range(400, 410):
        bits["epgd"][:, example] = np.arange(5) < 2
        bits["transfer/B/pgd"][:, example] = np.arange(5) >= 3
        for name in (*WHITE_BOX[:-1], *TRANSFER[:-1]):
            bits[name][:, example] = True
    flag = flags_of(bits)["transfer_beats_white_box"]
    assert flag["raised"] is True and flag["discordant"] == [12, 0]
    assert "epgd correct on 12 examples where transfer/B/pgd is not" in flag["evidence"]
    # Transfer correct in 3 of 5 repeats where epgd is in 2: now those are discordant the other way.
    for example in range(400, 410):
        bits["transfer/B/pgd"][:, example] = np.arange(5) >= 2
    flag = flags_of(bits)["transfer_beats_white_box"]
    assert flag["raised"] is False and flag["discordant"] == [12, 10]


def test_randomized_single_step_flag_uses_per_repeat_and():
    bits = randomized(honest(), repeats=3)
    bits["epgd"] = bits.pop("pgd")
    bits["fgsm"] = np.repeat(first(188), 3, axis=0)
    bits["ifgsm"][0, 188:200] = False   # broken in one repeat of three: still 2/3 correct vs 0
    flag = flags_of(bits)["single_step_beats_pgd"]
    assert flag["raised"] is True and flag["compared"] == ["epgd & ifgsm", "fgsm"]


# ---------------------------------------------------------------- unpaired flags


@pytest.mark.parametrize(("correct", "raised"), [(0, False), (1, False), (4, False), (5, True), (30, True)])
def test_unbounded_pgd_uses_an_exact_binomial_test(correct, raised):
    # P(X >= 4 | 100, 1%) = 0.018 and P(X >= 5) = 0.0034, across ALPHA = 0.01.
    flag = flags_of(honest(), unbounded=first(correct, 100))["pgd_unbounded_not_zero"]
    assert flag["raised"] is raised and flag["masking"] is True
    assert (flag["p_value"] < ALPHA) is raised
    assert f"{correct} of 100" in flag["evidence"]


def test_undeclared_randomness_is_a_masking_flag_without_p_value():
    flags = flags_of(honest(), declared=False, detected=True)
    assert flags["randomness_undeclared"]["raised"] is True
    assert flags["randomness_undeclared"]["p_value"] is None
    assert flags_of(honest(), declared=True, detected=True)["randomness_undeclared"]["raised"] is False


def test_no_gradient_reads_the_optional_per_attack_field():
    missing = flags_of(honest(), gradient={"pgd": {"missing": 7, "n": N}, "fgsm": {"missing": 0, "n": N}})
    assert missing["no_gradient"]["raised"] is True and missing["no_gradient"]["masking"] is True
    assert "pgd: 7 of 500 correctly classified examples" in missing["no_gradient"]["evidence"]
    assert missing["no_gradient"]["missing"] == {"pgd": 7, "fgsm": 0}
    fine = flags_of(honest(), gradient={"pgd": {"missing": 0, "n": N}})
    assert fine["no_gradient"]["raised"] is False
    dead_relus = flags_of(honest(), gradient={"pgd": {"missing": 1, "n": N}})   # zoo A_trades: 1 of 500
    assert dead_relus["no_gradient"]["raised"] is False, "a rare dead region of an honest network is tolerated"


# ---------------------------------------------------------------- the registry


def test_a_registered_flag_is_computed_with_its_masking_bit(monkeypatch):
    monkeypatch.setattr(diagnostics, "FLAGS", list(diagnostics.FLAGS))

    @register("always", masking=False)
    def always(record, outcomes):
        return {"raised": True, "p_value": None, "evidence": "always raised"}

    flags = gradient_masking_flags(*build(honest()))
    assert flags["always"] == {"raised": True, "masking": False, "p_value": None, "evidence": "always raised"}
    with pytest.raises(ValueError, match="already registered"):
        register("always", masking=True)(always)


def test_old_records_without_the_masking_key_are_judged_by_the_registry():
    assert is_masking("single_step_beats_pgd", {"raised": True}) is True
    assert is_masking("adversarial_above_clean", {"raised": True}) is False
    assert is_masking("adversarial_above_clean", {"raised": True, "masking": True}) is True
    assert is_masking("a_flag_from_the_future", {"raised": True}) is True
