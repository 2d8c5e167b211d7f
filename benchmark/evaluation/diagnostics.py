"""Gradient-masking flags (docs/ranking.md), computed from a record and its per-example outcomes.

Flags are a registry: each is a named function of (record, outcomes) with a `masking` bit, and a
raised masking flag keeps an entry out of the ranking (benchmark.board.leaderboard). Register another with
`@register("name", masking=True)`.

Every flag that compares two measurements compares them on the same examples (NAttack's: its
subsample, or the first `nattack_n` under spec v1; all n otherwise) with an exact paired test: McNemar's exact
test on the per-example bits, or for randomized defenses the exact sign test on each example's
fraction correct over repeats (benchmark.evaluation.stats.paired_test). A flag is raised when its one-sided
p-value is below ALPHA = 0.01. A flag made of several comparisons (one per attack) reports the
smallest p-value times the number of comparisons (Bonferroni), so each flag on its own raises
falsely with probability at most 1% for an honest defense, one whose suspect measurements are no
stronger than their references. An entry has six such p-valued flags, five of them masking, so an
honest entry is kept out of the ranking by a false alarm with probability at most 5% (Bonferroni,
whatever the dependence between flags), and raises any p-valued flag with probability at most 6%.
The exact tests are discrete, so the true rates lie below these bounds. `randomness_undeclared`
and `no_gradient` are observations rather than tests and carry no p-value.

A flag whose evidence needs a measurement that did not run is recorded with `raised: null` ("not
evaluated"), never as false.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.evaluation.results import Outcomes
from benchmark.evaluation.stats import PairedTest, binomial_tail, paired_test
from benchmark.spec.names import SINGLE_STEP_ATTACKS

ALPHA = 0.01                     # one-sided, per flag (docs/ranking.md)
ITERATIVE = ("pgd", "epgd", "pgd_margin", "epgd_margin", "ifgsm")
UNBOUNDED_PGD_TOLERANCE = 0.01   # PGD at eps = 1 must bring accuracy to ~0: at most 1%
# Honest ReLU networks have rare inputs where a whole layer is dead and the logits are constant (zoo
# A_trades: 1 of 500 test images, already misclassified). A defense without a usable gradient loses it
# on most examples, so the flag tolerates up to 1% of the correctly classified examples.
NO_GRADIENT_TOLERANCE = 0.01

FlagCheck = Callable[[dict[str, Any], dict[str, Outcomes]], dict[str, Any]]


@dataclass(frozen=True)
class Flag:
    name: str
    masking: bool   # raised, it keeps the entry out of the ranking
    check: FlagCheck


FLAGS: list[Flag] = []


def register(name: str, *, masking: bool) -> Callable[[FlagCheck], FlagCheck]:
    def add(check: FlagCheck) -> FlagCheck:
        if any(flag.name == name for flag in FLAGS):
            raise ValueError(f"flag {name!r} is already registered")
        FLAGS.append(Flag(name, masking, check))
        return check
    return add


def is_masking(name: str, flag: dict[str, Any]) -> bool:
    """Whether a recorded flag is a masking flag. Records before the registry lack the key, so the
    registry decides; a flag unknown to it counts as masking (a raised unknown flag is not ignored)."""
    if "masking" in flag:
        return bool(flag["masking"])
    return next((f.masking for f in FLAGS if f.name == name), True)


def gradient_masking_flags(record: dict[str, Any],
                           outcomes: dict[str, Outcomes]) -> dict[str, dict[str, Any]]:
    """Every registered flag of one record; `outcomes` holds per-example bits by measurement name
    ("clean" and the diagnostics included)."""
    flags = {}
    for flag in FLAGS:
        result = flag.check(record, outcomes)
        flags[flag.name] = {"raised": result["raised"], "masking": flag.masking,
                            "p_value": result.get("p_value"), **result}
    return flags


# ---------------------------------------------------------------- paired comparisons


@dataclass(frozen=True)
class Comparison:
    """The alternative: `first` is correct more often than `second` (the second beats the first)."""

    first: str
    second: str
    test: PairedTest


def _not_evaluated(evidence: str) -> dict[str, Any]:
    return {"raised": None, "p_value": None, "evidence": evidence}


def _bits(outcomes: dict[str, Outcomes], names: list[str], columns: np.ndarray, with_clean: bool) -> np.ndarray:
    """bool [repeats, k]: correct under every listed measurement (and clean), per example and repeat,
    on the given example indices."""
    rows = [outcomes[name].correct[:, columns] for name in (["clean"] if with_clean else []) + names]
    return np.logical_and.reduce(rows)


def _columns(outcomes: dict[str, Outcomes], names: list[str]) -> np.ndarray:
    """The examples every listed measurement ran on: the first min(n), within the adaptive subsample
    when one of them has it (spec v2)."""
    chosen = np.ones(min(outcomes[name].n for name in names), dtype=bool)
    for name in names:
        if outcomes[name].subsample is not None:
            chosen &= outcomes[name].subsample[:chosen.size]
    return np.flatnonzero(chosen)


def _compare(outcomes: dict[str, Outcomes], first: tuple[str, list[str]], second: tuple[str, list[str]],
             *, worst_case: bool = False) -> Comparison:
    """Paired test on the examples both sides ran on; a worst case includes the clean input."""
    (first_label, first_names), (second_label, second_names) = first, second
    columns = _columns(outcomes, first_names + second_names)
    test = paired_test(_bits(outcomes, first_names, columns, worst_case),
                       _bits(outcomes, second_names, columns, worst_case))
    return Comparison(first_label, second_label, test)


def _paired_flag(comparisons: list[Comparison], quiet: str) -> dict[str, Any]:
    """Raised when the Bonferroni-adjusted smallest p-value is below ALPHA; the evidence names every
    comparison that is significant after the adjustment."""
    m = len(comparisons)
    adjusted = [min(1.0, m * c.test.p_value) for c in comparisons]
    best = min(range(m), key=lambda i: (adjusted[i], i))
    strongest, p_value = comparisons[best], adjusted[best]
    raised = p_value < ALPHA
    significant = [(c, p) for c, p in zip(comparisons, adjusted, strict=True) if p < ALPHA]
    details = "; ".join(f"{c.first} correct on {c.test.a_only} examples where {c.second} is not, "
                        f"{c.second} on {c.test.b_only} where {c.first} is not (p = {p:.3g})"
                        for c, p in significant or [(strongest, p_value)])
    test = "exact paired test, one-sided" + (f", Bonferroni over {m} comparisons" if m > 1 else "")
    evidence = (f"{details} ({test}; p < {ALPHA:g})" if raised
                else f"{quiet}; closest: {details} ({test}; p >= {ALPHA:g})")
    return {"raised": raised, "p_value": p_value, "compared": [strongest.first, strongest.second],
            "discordant": [strongest.test.a_only, strongest.test.b_only], "comparisons": m,
            "evidence": evidence}


def _family(record: dict[str, Any], family: str) -> list[str]:
    return [name for name, m in record["attacks"].items() if m["family"] == family]


def _white_box_counterpart(attacks: dict[str, Any], attack: str) -> str | None:
    """The white-box attack a transfer attack is compared with; EOT's `e` prefix for randomized ones."""
    for name in (attack, f"e{attack}"):
        if attacks.get(name, {}).get("family") == "white_box":
            return name
    return None


@register("transfer_beats_white_box", masking=True)
def transfer_beats_white_box(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    white_box, transfer = _family(record, "white_box"), _family(record, "transfer")
    if not white_box or not transfer:
        return _not_evaluated("needs the white-box and transfer families")
    comparisons = [_compare(outcomes, ("white-box worst case", white_box), ("transfer worst case", transfer),
                            worst_case=True)]
    for name in transfer:
        counterpart = _white_box_counterpart(record["attacks"], name.rsplit("/", 1)[-1])
        if counterpart is not None:
            comparisons.append(_compare(outcomes, (counterpart, [counterpart]), (name, [name])))
    return _paired_flag(comparisons, "no transfer attack is significantly stronger than white-box")


@register("nattack_beats_white_box", masking=True)
def nattack_beats_white_box(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    white_box, adaptive = _family(record, "white_box"), _family(record, "adaptive")
    if not white_box or "nattack" not in adaptive:
        return _not_evaluated("needs the white-box and adaptive families")
    # On the NAttack examples: _compare takes the smallest n of the two sides.
    comparison = _compare(outcomes, ("white-box worst case", white_box),
                          ("adaptive worst case", adaptive), worst_case=True)
    return _paired_flag([comparison], "NAttack is not significantly stronger than white-box")


@register("single_step_beats_pgd", masking=True)
def single_step_beats_pgd(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    white_box = _family(record, "white_box")
    iterative = [name for name in ITERATIVE if name in white_box]
    single = [name for name in SINGLE_STEP_ATTACKS if name in white_box]
    if not iterative or not single:
        return _not_evaluated("needs a single-step and an iterative white-box attack")
    label = " & ".join(iterative)
    comparisons = [_compare(outcomes, (label, iterative), (name, [name])) for name in single]
    return _paired_flag(comparisons, f"no single-step attack is significantly stronger than {label}")


@register("rand_fgsm_beats_fgsm", masking=True)
def rand_fgsm_beats_fgsm(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    white_box = _family(record, "white_box")
    if "rand_fgsm" not in white_box or "fgsm" not in white_box:
        return _not_evaluated("fgsm or rand_fgsm not run")
    comparison = _compare(outcomes, ("fgsm", ["fgsm"]), ("rand_fgsm", ["rand_fgsm"]))
    return _paired_flag([comparison], "rand_fgsm is not significantly stronger than fgsm")


@register("adversarial_above_clean", masking=False)
def adversarial_above_clean(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    """Label leaking (Kurakin et al. 2017, arXiv:1611.01236): an attack that fixes more examples than
    it breaks. A flaw of the attack's labels, not of the defense, so it does not gate the ranking."""
    attacks = list(record["attacks"])
    if not attacks:
        return _not_evaluated("no attack ran")
    comparisons = [_compare(outcomes, (name, [name]), ("clean", ["clean"])) for name in attacks]
    result = _paired_flag(comparisons, "no attack leaves accuracy significantly above clean")
    if result["raised"]:
        result["evidence"] = "label leaking: " + result["evidence"]
    return result


@register("pgd_unbounded_not_zero", masking=True)
def pgd_unbounded_not_zero(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    """Not paired: one exact binomial test that accuracy under PGD at eps = 1 exceeds 1%."""
    unbounded = record.get("diagnostics", {}).get("pgd_unbounded")
    if unbounded is None or "pgd_unbounded" not in outcomes:
        return _not_evaluated("the unbounded PGD diagnostic was not run")
    correct = outcomes["pgd_unbounded"].correct
    n = correct.shape[1]
    k = int(round(float(correct.sum(axis=1).mean())))   # the mean over repeats, as in the record
    p_value = binomial_tail(k, n, UNBOUNDED_PGD_TOLERANCE)
    raised = p_value < ALPHA
    return {"raised": raised, "p_value": p_value, "correct": k, "n": n,
            "evidence": f"PGD at eps {unbounded['params'].get('eps', 1.0):g} leaves {k} of {n} examples "
                        f"correct; exact binomial test that accuracy exceeds "
                        f"{UNBOUNDED_PGD_TOLERANCE:g}: p = {p_value:.3g} "
                        f"{'<' if raised else '>='} {ALPHA:g}"}


@register("randomness_undeclared", masking=True)
def randomness_undeclared(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    randomness = record["randomness"]
    raised = bool(randomness["detected"] and not randomness["declared"])
    return {"raised": raised, "p_value": None,
            "evidence": "two forward passes on the same batch differ, but the defense does not declare "
                        "randomized" if raised else "declared and detected randomness agree"}


@register("no_gradient", masking=True)
def no_gradient(record: dict[str, Any], outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    """White-box attacks that found no usable input gradient on some examples, from the optional
    per-attack field `gradient = {"missing": k, "n": n}`."""
    counted = {name: m["gradient"] for name, m in record["attacks"].items()
               if m.get("family") == "white_box" and "gradient" in m}
    if not counted:
        return _not_evaluated("no white-box attack recorded its gradients")
    missing = {name: g for name, g in counted.items() if g["missing"] > NO_GRADIENT_TOLERANCE * g["n"]}
    raised = bool(missing)
    return {"raised": raised, "p_value": None,
            "missing": {name: g["missing"] for name, g in counted.items()},
            "evidence": "; ".join(f"{name}: {g['missing']} of {g['n']} correctly classified examples had no "
                                  "usable input gradient" for name, g in missing.items()) if raised
            else f"at most {NO_GRADIENT_TOLERANCE:.0%} of the correctly classified examples lacked a usable "
                 f"input gradient under {', '.join(counted)}"}
