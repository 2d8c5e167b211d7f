"""The numbers a record states, as functions of its per-example outcomes.

The judge writes a record with these functions (`benchmark.evaluation.record`) and the verifier
recomputes them from the per-example file (`benchmark.evaluation.record_verify`): one definition of
every accuracy, interval, worst case and cascade line, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmark.evaluation.cascade import cascade_stages, estimate_from_outcomes
from benchmark.evaluation.results import Outcomes
from benchmark.evaluation.stats import wilson_interval
from benchmark.spec import FAMILIES

# The families before the adaptive one, in the cascade's order: NAttack attacks their survivors.
PRIOR_FAMILIES = FAMILIES[:2]


def summarize(correct: np.ndarray, confidence: float) -> dict[str, Any]:
    """Accuracy of bool [repeats, n] outcomes: the mean over repeats, with a Wilson interval.

    With repeated (randomized) predictions, the interval is computed on the mean number of correct
    examples, and the spread across repeats is recorded beside it.
    """
    repeats, n = correct.shape
    per_repeat = correct.mean(axis=1)
    accuracy = float(per_repeat.mean())
    mean_correct = float(correct.sum(axis=1).mean())
    low, high = wilson_interval(int(round(mean_correct)), n, confidence)
    summary = {"accuracy": accuracy, "correct": int(round(mean_correct)), "n": int(n),
               "interval": [low, high]}
    if repeats > 1:
        summary["repeats"] = int(repeats)
        summary["spread"] = {"std": float(per_repeat.std()), "min": float(per_repeat.min()),
                             "max": float(per_repeat.max())}
    return summary


def measurement_numbers(outcome: Outcomes, confidence: float) -> dict[str, Any]:
    """What a record states about one measurement that its per-example bits determine."""
    numbers = adaptive_summary(outcome, confidence) if outcome.attacked is not None \
        else summarize(outcome.correct, confidence)
    queries = outcome.queries if outcome.attacked is None or outcome.queries is None \
        else outcome.queries[outcome.attacked]
    if queries is not None and queries.size:
        numbers["queries"] = queries_summary(queries)
    return numbers


def adaptive_summary(outcome: Outcomes, confidence: float) -> dict[str, Any]:
    """NAttack's accuracy on the examples it attacked (none: the cascade left it no survivor)."""
    if not outcome.attacked.any():
        return {"accuracy": None, "correct": 0, "n": 0, "interval": None}
    return summarize(outcome.correct[:, outcome.attacked], confidence)


def queries_summary(queries: np.ndarray) -> dict[str, Any]:
    return {"median": float(np.median(queries)), "mean": float(queries.mean()),
            "max": int(queries.max()), "total": int(queries.sum())}


# ---------------------------------------------------------------- worst cases


def worst_cases(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: str | None,
                cascaded: bool, nattack_n: int, confidence: float, *, complete: bool) -> dict[str, Any]:
    """The record's `worst_case`: per family, and over all families when every family ran.
    `staged` names the adaptive measurement of spec v2 (a subsample); None under spec v1."""
    n = outcomes["clean"].n
    worst: dict[str, Any] = {family: None for family in FAMILIES}
    for family, names in by_family.items():
        if family == "adaptive" and staged is not None:
            worst[family] = adaptive_worst_case(outcomes, by_family, outcomes[staged], confidence,
                                                cascaded=cascaded)
            continue
        size = nattack_n if family == "adaptive" else n
        worst[family] = worst_case(outcomes, names, size, confidence,
                                   f"correct on the clean input and under every {family} attack")
    worst["all"] = None
    if not complete:
        return worst
    if staged is not None:
        worst["all"] = estimated_worst_case(outcomes, by_family, outcomes[staged], confidence)
        return worst
    worst["all"] = first_examples_worst_case(outcomes, by_family, nattack_n, confidence)
    return worst


def worst_case(outcomes: dict[str, Outcomes], names: list[str], n: int, confidence: float,
               definition: str) -> dict[str, Any]:
    """Per example (and per repeat): correct on the clean input and under every listed measurement."""
    stacked = [outcomes["clean"].correct[:, :n], *(outcomes[m].correct[:, :n] for m in names)]
    return {**summarize(np.logical_and.reduce(stacked), confidence), "definition": definition,
            "measurements": names}


def first_examples_worst_case(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], nattack_n: int,
                              confidence: float) -> dict[str, Any]:
    """Spec v1's worst case over all families: on the first `nattack_n` examples, where NAttack ran."""
    names = [name for family in FAMILIES for name in by_family[family]]
    worst = worst_case(outcomes, names, nattack_n, confidence,
                       "correct on the clean input and under every attack of every family, "
                       f"on the first {nattack_n} examples (where NAttack ran)")
    # The same examples per family, so that the gaps between families compare like with like.
    worst["families_on_subset"] = {
        family: summarize(np.logical_and.reduce(
            [outcomes["clean"].correct[:, :nattack_n],
             *(outcomes[m].correct[:, :nattack_n] for m in by_family[family])]), confidence)["accuracy"]
        for family in FAMILIES
    }
    return worst


def adaptive_worst_case(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: Outcomes,
                        confidence: float, *, cascaded: bool) -> dict[str, Any]:
    """The adaptive family's worst case on its subsample. With the cascade it is cumulative (NAttack
    attacked only the survivors of the other families); without, NAttack's own."""
    names = by_family["adaptive"]
    bits = [outcomes[name].correct for name in names]
    if cascaded:
        bits.append(_prior_bits(outcomes, by_family))
    else:
        bits.append(outcomes["clean"].correct)
    definition = ("correct on the clean input and under every attack of every family, on the adaptive "
                  "subsample (the cascade: NAttack attacked only the survivors of the others)" if cascaded
                  else "correct on the clean input and under every adaptive attack, on the adaptive subsample")
    return {**summarize(np.logical_and.reduce(bits)[:, staged.subsample], confidence),
            "definition": definition, "measurements": names}


def estimated_worst_case(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: Outcomes,
                         confidence: float) -> dict[str, Any]:
    """The ranking key: the per-example worst case over all families, estimated in two phases
    (benchmark.evaluation.cascade) when the adaptive subsample is smaller than the evaluation set."""
    prior = _prior_bits(outcomes, by_family)
    final = np.logical_and.reduce([prior, *(outcomes[name].correct for name in by_family["adaptive"])])
    estimate = estimate_from_outcomes(prior, final, staged.subsample, confidence)
    subsample = staged.subsample
    key = {"accuracy": estimate.accuracy, "interval": list(estimate.interval), "n": estimate.n,
           "subsample": estimate.subsample, "method": estimate.method}
    if estimate.method == "direct":
        key.update({k: v for k, v in summarize(final, confidence).items() if k not in key})
        definition = ("correct on the clean input and under every attack of every family, per example "
                      "(NAttack on every example that survived the others)")
    else:
        definition = ("p * q: p, the worst case over clean, white-box and transfer on all n examples; q, the "
                      "fraction of the adaptive subsample's survivors that NAttack left correct; interval: "
                      "the product of both Wilson bounds at confidence 1 - alpha/2 (docs/ranking.md)")
    key.update(definition=definition, estimate=estimate.as_dict(),
               measurements=[name for family in FAMILIES for name in by_family[family]])
    # The same examples per family, so that the gaps between families compare like with like.
    clean = outcomes["clean"].correct
    key["families_on_subset"] = {
        **{family: float((clean & _family_bits(outcomes, by_family, family))[:, subsample].mean())
           for family in PRIOR_FAMILIES},
        "all": float(final[:, subsample].mean()),
    }
    return key


def _family_bits(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], family: str) -> np.ndarray:
    """bool [repeats, n]: correct under every attack of one family."""
    return np.logical_and.reduce([outcomes[name].correct for name in by_family[family]])


def _prior_bits(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]]) -> np.ndarray:
    """bool [repeats, n]: correct on the clean input and under every white-box and transfer attack."""
    names = ["clean", *(name for family in PRIOR_FAMILIES for name in by_family.get(family, []))]
    return np.logical_and.reduce([outcomes[name].correct for name in names])


# ---------------------------------------------------------------- the cascade


def record_cascade(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: str,
                   ) -> list[dict[str, Any]]:
    """The record's `cascade`: what each family attacked and broke beyond the earlier ones."""
    outcome = outcomes[staged]
    return cascade_stages(
        outcomes["clean"].correct,
        [(family, _family_bits(outcomes, by_family, family)) for family in PRIOR_FAMILIES
         if by_family.get(family)],
        (_family_bits(outcomes, by_family, "adaptive"), outcome.subsample, outcome.attacked))


def nattack_cascade(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """NAttack's line of the cascade, kept beside its accuracy: what it attacked and broke."""
    stage = stages[-1]
    return {"subsample": stage["subsample"], "survivors": stage["survivors_in_subsample"],
            "attacked": stage["attacked"], "broken": stage["broken"]}
