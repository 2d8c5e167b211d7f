"""Refuse weights fitted to the evaluation images, before any attack runs.

Why: the test sets are public and the spec's subset is fixed (the first n test images, so that every
entry meets the same examples). Nothing in a weights file shows that it was trained, adversarially or
not, on exactly those images, yet such weights would be judged more robust than they are on any
other image. What does show is the gap: a model fitted to the subset is more accurate on it than on
the rest of the test set, which it never saw, while an honest model, trained on the training split,
meets both as unseen images (docs/threat-model-checks.md, "Weights fitted to the evaluation images").

The check compares clean accuracy (the defense's `predict`, one draw per image for a randomized one)
on the subset and on the test images that follow it, at most max(4 n, 1,000) of them, class by class:
an exact stratified test (benchmark.evaluation.stats.stratified_exact_greater), one-sided, refusing
at p < REFUSE_BELOW. The threshold is the false-refusal rate of an honest defense: about 1 in 10,000
evaluations. A budget whose subset is the whole test set (`full`) leaves nothing to compare with and
records why; ImageNet's subset is a list of validation images and is not checked yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.data.evaluation_set import to_unit_float
from benchmark.data.splits import load_split
from benchmark.errors import StatefulDefenseError
from benchmark.evaluation.checks import preserved_rng_state
from benchmark.evaluation.stats import stratified_exact_greater, wilson_interval
from benchmark.models.defense import Defense
from benchmark.runtime.randomness import derive_seed

REFUSE_BELOW = 1e-4          # one-sided p: the false-refusal rate of an honest defense
MIN_REST = 1000              # compare with at least this many other test images where the split has them
REST_PER_EXAMPLE = 4         # and at most 4 per evaluated example: enough power, bounded cost
BATCH = 256
CHECK = "held_out"


@dataclass(frozen=True)
class HeldOutComparison:
    """Clean accuracy on the evaluation subset and on the rest of the test set, and the exact test."""

    subset_correct: int
    subset_n: int
    rest_correct: int
    rest_n: int
    p_value: float

    @property
    def refused(self) -> bool:
        return self.p_value < REFUSE_BELOW

    def as_record(self, confidence: float) -> dict[str, Any]:
        return {"status": "run", "test": "exact, stratified by class, one-sided (subset more accurate)",
                "p_value": self.p_value, "refuse_below": REFUSE_BELOW,
                "subset": _summary(self.subset_correct, self.subset_n, confidence),
                "rest": _summary(self.rest_correct, self.rest_n, confidence)}

    def message(self, name: str) -> str:
        return (f"{name}: refused by the held-out check: clean accuracy {_percent(self.subset_correct, self.subset_n)} "
                f"on the {self.subset_n:,} evaluation images but {_percent(self.rest_correct, self.rest_n)} on "
                f"{self.rest_n:,} other test images of the same classes (exact stratified test, p = "
                f"{self.p_value:.2g} < {REFUSE_BELOW:g}): weights fitted to the fixed evaluation subset are "
                "not judged; train on the training split only (docs/threat-model-checks.md)")


def not_checked(reason: str) -> dict[str, Any]:
    return {"status": "not_run", "reason": reason}


def held_out_comparison(defense: Defense, dataset: str, n: int, data_dir, *, seed: int,
                        device: torch.device) -> HeldOutComparison | str:
    """The comparison, or why there is none (a reason for the record)."""
    if dataset == "imagenet":
        return "ImageNet's evaluation subset is a list of validation images; not checked yet"
    images, labels = load_split(dataset, "test", data_dir, download=False)
    rest = min(len(labels) - n, max(REST_PER_EXAMPLE * n, MIN_REST))
    if rest <= 0:
        return f"the budget evaluates all {len(labels):,} test images; none is left to compare with"
    correct = _correct(defense, images[:n + rest], labels[:n + rest], seed=seed, device=device)
    subset, others = slice(0, n), slice(n, n + rest)
    strata = []
    for label in np.unique(labels[:n + rest]):
        in_subset, in_rest = labels[subset] == label, labels[others] == label
        strata.append((int(correct[subset][in_subset].sum()), int(in_subset.sum()),
                       int(correct[others][in_rest].sum()), int(in_rest.sum())))
    return HeldOutComparison(int(correct[subset].sum()), n, int(correct[others].sum()), rest,
                             stratified_exact_greater(strata))


def check_not_fitted_to_evaluation_images(defense: Defense, dataset: str, n: int, data_dir, *, seed: int,
                                          device: torch.device, confidence: float) -> dict[str, Any]:
    """Raise StatefulDefenseError (check "held_out") on a significant gap; otherwise the record's
    `held_out` field."""
    comparison = held_out_comparison(defense, dataset, n, data_dir, seed=seed, device=device)
    if isinstance(comparison, str):
        return not_checked(comparison)
    if comparison.refused:
        raise StatefulDefenseError(comparison.message(defense.name), CHECK)
    return comparison.as_record(confidence)


def _correct(defense: Defense, images: np.ndarray, labels: np.ndarray, *, seed: int,
             device: torch.device) -> np.ndarray:
    """Per image, whether `predict` is right; model noise seeded per batch, torch's state restored."""
    correct = np.zeros(len(labels), dtype=bool)
    with preserved_rng_state(), torch.no_grad():
        for start in range(0, len(labels), BATCH):
            x = to_unit_float(torch.from_numpy(images[start:start + BATCH])).to(device)
            _seed_model_noise(derive_seed(seed, CHECK, "model-noise", start), device)
            predicted = defense.predict(x).cpu().numpy()
            correct[start:start + BATCH] = predicted == labels[start:start + BATCH]
    return correct


def _seed_model_noise(value: int, device: torch.device) -> None:
    # Not torch.manual_seed: where CUDA is not initialized it would queue a CUDA seed that runs at
    # initialization, after preserved_rng_state has restored the state.
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)


def _summary(correct: int, n: int, confidence: float) -> dict[str, Any]:
    return {"accuracy": correct / n, "correct": correct, "n": n, "interval": list(wilson_interval(correct, n, confidence))}


def _percent(correct: int, n: int) -> str:
    return f"{100 * correct / n:.1f}%"
