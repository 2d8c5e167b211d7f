"""Refuse a defense whose outputs break the interface, on a real batch, before anything is measured."""

from __future__ import annotations

import torch

from benchmark.errors import DefenseOutputError
from benchmark.models.defense import Defense


def check_defense_output(defense: Defense, x: torch.Tensor, num_classes: int) -> None:
    """The defense's predict and scores have the interface's shapes and meaning, on a real batch."""
    if defense.num_classes != num_classes:
        raise DefenseOutputError(
            f"{defense.name}: built for {defense.num_classes} classes, the dataset has {num_classes}"
        )
    predictions = defense.predict(x)   # raises on a wrong shape or non-finite logits
    if predictions.shape != (x.shape[0],):
        raise DefenseOutputError(f"{defense.name}: predict returned shape {tuple(predictions.shape)}, "
                                 f"expected ({x.shape[0]},) labels")
    scores = defense.scores(x)
    if scores.shape != (x.shape[0], num_classes):
        raise DefenseOutputError(f"{defense.name}: scores returned shape {tuple(scores.shape)}, "
                                 f"expected ({x.shape[0]}, {num_classes}) probabilities")
    totals = scores.sum(dim=1)
    if not torch.isfinite(scores).all() or (scores < 0).any() or (totals - 1).abs().max() > 1e-4:
        raise DefenseOutputError(
            f"{defense.name}: scores must be probabilities (non-negative, each row summing to 1), but "
            f"row sums range from {float(totals.min()):.4g} to {float(totals.max()):.4g}; return a "
            "softmax or a vote distribution, which is what the defense reports"
        )
    log_scores = defense.log_scores(x)
    if log_scores.shape != (x.shape[0], num_classes) or not torch.isfinite(log_scores).all():
        raise DefenseOutputError(
            f"{defense.name}: log_scores returned shape {tuple(log_scores.shape)} or non-finite values; "
            f"expected finite ({x.shape[0]}, {num_classes}) log-probabilities (log-softmax of the logits)"
        )
