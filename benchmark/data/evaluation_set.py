"""EvaluationSet: the first n examples of a dataset's evaluation split, and the sha256 that is its
identity."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True, eq=False)
class EvaluationSet(Dataset):
    """The first n examples of a dataset's evaluation split; item i is (x CHW float32 in [0,1], y)."""

    dataset: str
    n: int
    sha256: str
    labels: torch.Tensor = field(repr=False)
    image_loader: Callable[[int], torch.Tensor] = field(repr=False)

    def __post_init__(self) -> None:
        if self.labels.shape != (self.n,) or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 of shape ({self.n},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        position = operator.index(index)
        if not 0 <= position < self.n:
            raise IndexError(f"example index {position} out of range 0..{self.n - 1}")
        return self.image_loader(position), int(self.labels[position])


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class InMemoryImages:
    images: torch.Tensor  # uint8 N,C,H,W

    def __call__(self, index: int) -> torch.Tensor:
        return to_unit_float(self.images[index])


def subset_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the raw uint8 image bytes (N,C,H,W, C order) then the labels as int64 LE."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()
