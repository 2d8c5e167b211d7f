"""The attack cascade and the two-phase estimate of the ranking key (docs/ranking.md, "The cascade").

Measurements run from cheap to expensive, as AutoAttack does (Croce & Hein 2020, arXiv:2003.01690):
clean, the white-box family and the transfer family on all n examples, then the adaptive family
(NAttack) on the examples of a fixed, seeded, uniformly random subsample that survived all of them
(for a randomized entry: in at least one of the prediction repeats). An example that an earlier
family broke is broken whatever NAttack does, so the per-example worst case is the same as without
the cascade, with fewer queries (zoo D at the standard budget: 1.40M instead of 2.42M).

When the subsample is smaller than the evaluation set, the worst case over all families is
estimated in two phases: acc = p * q, where p is the worst case over clean, white-box and transfer on
all n examples, and q the fraction of the subsample's survivors that NAttack left correct. Its
interval is the product of the two Wilson bounds, each at confidence 1 - alpha/2: both factors lie
in their intervals together with probability at least 1 - alpha (Bonferroni), and the product is
monotone in both, so the interval covers acc with at least the stated confidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmark.evaluation.stats import wilson_interval
from benchmark.runtime.randomness import derive_seed
from benchmark.spec.names import FAMILY_LABELS

SUBSAMPLE_STREAM = "adaptive-subsample"


def adaptive_subsample(n: int, size: int, seed: int) -> np.ndarray:
    """bool [n]: the `size` examples of 0..n-1 with the smallest seeded keys.

    Every example gets an independent 63-bit key derived from (seed, index), so the chosen set is a
    uniformly random subset of that size, fixed by the seed; all n when size >= n.
    """
    if size < 0 or n < 0:
        raise ValueError(f"need n >= 0 and size >= 0, got n = {n}, size = {size}")
    chosen = np.zeros(n, dtype=bool)
    if size >= n:
        chosen[:] = True
        return chosen
    keys = np.array([derive_seed(seed, SUBSAMPLE_STREAM, i) for i in range(n)], dtype=np.uint64)
    chosen[np.argsort(keys, kind="stable")[:size]] = True
    return chosen


def survivors(prior: np.ndarray) -> np.ndarray:
    """bool [n]: examples correct in at least one repeat of bool [repeats, n] `prior` outcomes."""
    return np.asarray(prior, dtype=bool).any(axis=0)


@dataclass(frozen=True)
class TwoPhaseEstimate:
    """The ranking key with its interval, and both factors with theirs."""

    accuracy: float
    interval: tuple[float, float]
    method: str                      # "direct" (the subsample is the whole set) or "two-phase"
    n: int                           # examples in phase one (clean, white-box, transfer)
    subsample: int                   # examples in phase two (the adaptive subsample)
    p: float                         # worst case over clean, white-box and transfer, on all n
    p_interval: tuple[float, float]
    survivors: float                 # phase-two trials: surviving example-repeats, per repeat
    kept: float                      # of which NAttack left correct, per repeat
    q: float                         # kept / survivors (1 when there are no survivors)
    q_interval: tuple[float, float]
    factor_confidence: float         # the confidence of each factor's Wilson interval

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        for key in ("interval", "p_interval", "q_interval"):
            document[key] = list(document[key])
        return document


def two_phase_estimate(prior_correct: float, n: int, survivors: float, kept: float, subsample: int,
                       confidence: float) -> TwoPhaseEstimate:
    """acc = p * q from counts (means over repeats for a randomized entry; rounded for the intervals).

    prior_correct: examples correct under clean, white-box and transfer, of n;
    survivors, kept: those of the subsample, and those still correct after NAttack.
    With subsample == n, the estimate is the direct per-example worst case with its Wilson interval.
    """
    if not 0 <= kept <= survivors <= min(prior_correct, subsample) or not 0 <= prior_correct <= n:
        raise ValueError(f"inconsistent counts: prior {prior_correct} of n = {n}, survivors {survivors} "
                         f"and kept {kept} of the subsample of {subsample}")
    p = prior_correct / n if n else 0.0
    p_interval = wilson_interval(int(round(prior_correct)), n, confidence)
    q = kept / survivors if survivors else 1.0
    if subsample >= n:
        interval = wilson_interval(int(round(kept)), n, confidence)
        q_interval = wilson_interval(int(round(kept)), int(round(survivors)), confidence)
        return TwoPhaseEstimate(kept / n if n else 0.0, interval, "direct", n, subsample, p, p_interval,
                                survivors, kept, q, q_interval, confidence)
    factor_confidence = 1 - (1 - confidence) / 2
    p_low, p_high = wilson_interval(int(round(prior_correct)), n, factor_confidence)
    q_low, q_high = wilson_interval(int(round(kept)), int(round(survivors)), factor_confidence)
    return TwoPhaseEstimate(p * q, (p_low * q_low, p_high * q_high), "two-phase", n, subsample,
                            p, (p_low, p_high), survivors, kept, q, (q_low, q_high), factor_confidence)


def estimate_from_outcomes(prior: np.ndarray, final: np.ndarray, subsample: np.ndarray,
                           confidence: float) -> TwoPhaseEstimate:
    """The estimate from per-example bits: `prior` bool [repeats, n] under clean, white-box and
    transfer; `final` the same after NAttack (meaningful on the subsample); `subsample` bool [n]."""
    prior, final = np.asarray(prior, dtype=bool), np.asarray(final, dtype=bool)
    on_subsample = prior[:, subsample]
    return two_phase_estimate(
        prior_correct=float(prior.sum(axis=1).mean()), n=prior.shape[1],
        survivors=float(on_subsample.sum(axis=1).mean()),
        kept=float((final[:, subsample] & on_subsample).sum(axis=1).mean()),
        subsample=int(subsample.sum()), confidence=confidence)


def adaptive_cell(record: dict[str, Any]) -> str:
    """NAttack in one table cell: what it broke beyond the earlier families under the cascade
    ("broke k of m survivors"), or its own accuracy in a spec v1 record; with the median queries."""
    nattack = record["attacks"].get("nattack")
    if nattack is None:
        return "n/a"
    queries = nattack.get("queries", {}).get("median")
    spent = "" if queries is None else f" ({queries:g} q)"
    cascade = nattack.get("cascade")
    if cascade is None:
        return f"{100 * nattack['accuracy']:.1f}{spent}"
    if nattack["params"].get("cascade"):
        return f"broke {cascade['broken']} of {cascade['survivors']} survivors{spent}"
    return (f"{100 * nattack['accuracy']:.1f} on {cascade['attacked']}, broke {cascade['broken']} of "
            f"{cascade['survivors']} survivors{spent}")


def cascade_stages(clean: np.ndarray, families: list[tuple[str, np.ndarray]],
                   adaptive: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> list[dict[str, Any]]:
    """What each family of the cascade attacked and broke beyond the families before it.

    clean: bool [repeats, n]; families: (name, bool [repeats, n] worst case of the family) in cascade
    order; adaptive: (bits, subsample, attacked) of NAttack. An example survives a stage when it is
    still correct in at least one repeat; "broken" counts survivors of the earlier stages that no
    longer survive."""
    alive = survivors(clean)
    stages = [{"family": "clean", "examples": int(alive.size), "survivors": int(alive.sum())}]
    bits = np.asarray(clean, dtype=bool)
    for name, family in families:
        bits = bits & family
        after = survivors(bits)
        stages.append({"family": name, "attacked": int(alive.size), "broken": int((alive & ~after).sum()),
                       "survivors": int(after.sum())})
        alive = after
    if adaptive is not None:
        nattack, subsample, attacked = adaptive
        before = alive & subsample
        after = survivors(bits & nattack) & subsample
        stages.append({"family": "adaptive", "subsample": int(subsample.sum()),
                       "survivors_in_subsample": int(before.sum()), "attacked": int(attacked.sum()),
                       "broken": int((before & ~after).sum()), "survivors": int(after.sum())})
    return stages


def describe_cascade(stages: list[dict[str, Any]]) -> str:
    """One line: what each stage of a record's cascade broke and left."""
    parts = []
    for stage in stages:
        if stage["family"] == "clean":
            parts.append(f"clean {stage['survivors']} of {stage['examples']} correct")
        elif stage["family"] == "adaptive":
            parts.append(f"NAttack broke {stage['broken']} of the {stage['survivors_in_subsample']} survivors "
                         f"in its subsample of {stage['subsample']} ({stage['attacked']} attacked)")
        else:
            parts.append(f"{FAMILY_LABELS[stage['family']]} broke {stage['broken']} ({stage['survivors']} left)")
    return "; ".join(parts)
