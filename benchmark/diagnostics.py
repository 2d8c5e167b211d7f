"""Gradient-masking flags (DESIGN.md §4), computed from a record's numbers.

Significance = non-overlapping 95% intervals. A flag whose evidence needs a measurement that did not
run is recorded with `raised: null` ("not evaluated"), never as false.
"""

from __future__ import annotations

from typing import Any

from benchmark.stats import significantly_greater

SINGLE_STEP = ("fgsm", "step_ll", "rand_fgsm")
UNBOUNDED_PGD_TOLERANCE = 0.01   # PGD at eps = 1 must bring accuracy to ~0: at most 1%


def _interval(measurement: dict[str, Any]) -> tuple[float, float]:
    low, high = measurement["interval"]
    return low, high


def _flag(raised: bool | None, evidence: str) -> dict[str, Any]:
    return {"raised": raised, "evidence": evidence}


def _below(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a's accuracy is significantly below b's."""
    return significantly_greater(_interval(b), _interval(a))


def _iterative(attacks: dict[str, Any]) -> str | None:
    return "epgd" if "epgd" in attacks else "pgd" if "pgd" in attacks else None


def transfer_beats_white_box(record: dict[str, Any]) -> dict[str, Any]:
    attacks, worst = record["attacks"], record["worst_case"]
    if worst.get("transfer") is None or worst.get("white_box") is None:
        return _flag(None, "needs the white-box and transfer families")
    stronger = []
    for name, measurement in attacks.items():
        if measurement["family"] != "transfer":
            continue
        attack = name.rsplit("/", 1)[-1]
        white_box = attacks.get(attack) or (attacks.get("epgd") if attack == "pgd" else None)
        if white_box is not None and _below(measurement, white_box):
            stronger.append(f"{name} < white-box {attack}")
    if _below(worst["transfer"], worst["white_box"]):
        stronger.append("transfer worst case < white-box worst case")
    return _flag(bool(stronger), "; ".join(stronger) if stronger else
                 "no transfer attack is significantly stronger than its white-box counterpart")


def nattack_beats_white_box(record: dict[str, Any]) -> dict[str, Any]:
    nattack, white_box = record["attacks"].get("nattack"), record["worst_case"].get("white_box")
    if nattack is None or white_box is None:
        return _flag(None, "needs the white-box and adaptive families")
    raised = _below(nattack, white_box)
    return _flag(raised, f"nattack {nattack['accuracy']:.4f} vs white-box worst case "
                 f"{white_box['accuracy']:.4f}")


def single_step_beats_pgd(attacks: dict[str, Any]) -> dict[str, Any]:
    iterative = _iterative(attacks)
    if iterative is None:
        return _flag(None, "pgd not run")
    stronger = [a for a in SINGLE_STEP if a in attacks and _below(attacks[a], attacks[iterative])]
    return _flag(bool(stronger), f"accuracy under {', '.join(stronger)} is significantly below {iterative}"
                 if stronger else f"no single-step attack is significantly stronger than {iterative}")


def rand_fgsm_beats_fgsm(attacks: dict[str, Any]) -> dict[str, Any]:
    if "rand_fgsm" not in attacks or "fgsm" not in attacks:
        return _flag(None, "fgsm or rand_fgsm not run")
    raised = _below(attacks["rand_fgsm"], attacks["fgsm"])
    return _flag(raised, f"fgsm {attacks['fgsm']['accuracy']:.4f} vs rand_fgsm "
                 f"{attacks['rand_fgsm']['accuracy']:.4f}")


def adversarial_above_clean(clean: dict[str, Any], attacks: dict[str, Any]) -> dict[str, Any]:
    above = [a for a, m in attacks.items() if _below(clean, m)]
    return _flag(bool(above), f"accuracy under {', '.join(above)} is significantly above clean "
                 "(label leaking)" if above else "no attack leaves accuracy significantly above clean")


def pgd_unbounded_not_zero(diagnostics: dict[str, Any]) -> dict[str, Any]:
    unbounded = diagnostics.get("pgd_unbounded")
    if unbounded is None:
        return _flag(None, "the unbounded PGD diagnostic was not run")
    low = unbounded["interval"][0]
    raised = low > UNBOUNDED_PGD_TOLERANCE
    return _flag(raised, f"PGD at eps {unbounded['params'].get('eps', 1.0):g} leaves "
                 f"{unbounded['accuracy']:.4f} accuracy (95% interval from {low:.4f}); it should reach ~0")


def randomness_undeclared(randomness: dict[str, Any]) -> dict[str, Any]:
    raised = randomness["detected"] and not randomness["declared"]
    return _flag(raised, "two forward passes on the same batch differ, but the defense does not "
                 "declare randomized" if raised else "declared and detected randomness agree")


def gradient_masking_flags(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    attacks = record["attacks"]
    return {
        "transfer_beats_white_box": transfer_beats_white_box(record),
        "nattack_beats_white_box": nattack_beats_white_box(record),
        "single_step_beats_pgd": single_step_beats_pgd(attacks),
        "rand_fgsm_beats_fgsm": rand_fgsm_beats_fgsm(attacks),
        "adversarial_above_clean": adversarial_above_clean(record["clean"], attacks),
        "pgd_unbounded_not_zero": pgd_unbounded_not_zero(record.get("diagnostics", {})),
        "randomness_undeclared": randomness_undeclared(record["randomness"]),
    }
