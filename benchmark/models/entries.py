"""Build the defense an entry describes: architecture, hash-checked weights, normalization, smoothing.

One path for every kind of entry (zoo baseline, Hub submission, replay of a record), so that what
a record describes is exactly what was judged.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from benchmark.models.defense import Defense, load
from benchmark.models.smoothing import SmoothedDefense, SmoothingConfig


def judged_defense(architecture: str, weights: str | os.PathLike, *, sha256: str, num_classes: int,
                   in_channels: int, name: str, randomized: bool = False,
                   normalization: dict[str, Any] | None = None, smoothing: dict[str, Any] | None = None,
                   device: str | torch.device = "cpu") -> Defense:
    """The defense as the judge sees it; `smoothing` = {"samples", "sigma", "vote"} or None."""
    defense = load(architecture, weights, num_classes=num_classes, sha256=sha256, randomized=randomized,
                   in_channels=in_channels, name=name, normalization=normalization)
    if smoothing is not None:
        defense = SmoothedDefense(defense.model, num_classes, SmoothingConfig(**smoothing), name=name)
    return defense.to(device)
