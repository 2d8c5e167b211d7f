"""Gradient-masking flags (DESIGN.md §4), computed from a record's numbers.

Significance = non-overlapping 95% intervals. A flag whose evidence needs a family that did not run
is recorded as `null` ("not evaluated"), never as false.
"""

from __future__ import annotations

from typing import Any

from benchmark.stats import significantly_greater

SINGLE_STEP = ("fgsm", "step_ll", "rand_fgsm")


def _interval(measurement: dict[str, Any]) -> tuple[float, float]:
    low, high = measurement["interval"]
    return low, high


def _flag(raised: bool | None, evidence: str) -> dict[str, Any]:
    return {"raised": raised, "evidence": evidence}


def single_step_beats_pgd(attacks: dict[str, Any]) -> dict[str, Any]:
    if "pgd" not in attacks:
        return _flag(None, "pgd not run")
    stronger = [a for a in SINGLE_STEP if a in attacks
                and significantly_greater(_interval(attacks["pgd"]), _interval(attacks[a]))]
    return _flag(bool(stronger), f"accuracy under {', '.join(stronger)} is significantly below pgd"
                 if stronger else "no single-step attack is significantly stronger than pgd")


def rand_fgsm_beats_fgsm(attacks: dict[str, Any]) -> dict[str, Any]:
    if "rand_fgsm" not in attacks or "fgsm" not in attacks:
        return _flag(None, "fgsm or rand_fgsm not run")
    raised = significantly_greater(_interval(attacks["fgsm"]), _interval(attacks["rand_fgsm"]))
    return _flag(raised, f"fgsm {attacks['fgsm']['accuracy']:.4f} vs rand_fgsm "
                 f"{attacks['rand_fgsm']['accuracy']:.4f}")


def adversarial_above_clean(clean: dict[str, Any], attacks: dict[str, Any]) -> dict[str, Any]:
    above = [a for a, m in attacks.items() if significantly_greater(_interval(m), _interval(clean))]
    return _flag(bool(above), f"accuracy under {', '.join(above)} is significantly above clean "
                 "(label leaking)" if above else "no attack leaves accuracy significantly above clean")


def randomness_undeclared(randomness: dict[str, Any]) -> dict[str, Any]:
    raised = randomness["detected"] and not randomness["declared"]
    return _flag(raised, "two forward passes on the same batch differ, but the defense does not "
                 "declare randomized" if raised else "declared and detected randomness agree")


def gradient_masking_flags(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    attacks, families = record["attacks"], record["families"]
    not_run = "needs the {} family, which was not run"
    return {
        "transfer_beats_white_box": _flag(None, not_run.format("transfer"))
        if families["transfer"]["status"] != "run" else _flag(None, "not implemented"),
        "nattack_beats_white_box": _flag(None, not_run.format("adaptive"))
        if families["adaptive"]["status"] != "run" else _flag(None, "not implemented"),
        "single_step_beats_pgd": single_step_beats_pgd(attacks),
        "rand_fgsm_beats_fgsm": rand_fgsm_beats_fgsm(attacks),
        "adversarial_above_clean": adversarial_above_clean(record["clean"], attacks),
        "pgd_unbounded_not_zero": _flag(None, "the eps = 1 PGD check is not run by this version"),
        "randomness_undeclared": randomness_undeclared(record["randomness"]),
    }
