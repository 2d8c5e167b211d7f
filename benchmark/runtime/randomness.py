"""Seeded random streams that depend only on (seed, stream name, example index).

Every random draw of an evaluation (random starts, sign noise, a randomized model's noise) comes
from here, so results do not depend on the batch size, on resuming, or on how examples are sharded.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of printable parts."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def example_generator(seed: int, stream: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, index))


def per_example_uniform(shape: tuple[int, ...], indices: torch.Tensor, seed: int, stream: str,
                        low: float, high: float) -> torch.Tensor:
    """U(low, high) of `shape` per example, stacked in the order of `indices` (CPU tensor)."""
    draws = [torch.rand(shape, generator=example_generator(seed, stream, int(i))) for i in indices]
    return low + (high - low) * torch.stack(draws)


def per_example_sign(shape: tuple[int, ...], indices: torch.Tensor, seed: int, stream: str) -> torch.Tensor:
    """sign(N(0, I)) per example: +-1 with probability 1/2 each."""
    draws = [torch.randn(shape, generator=example_generator(seed, stream, int(i))) for i in indices]
    return torch.stack(draws).sign()


def seed_model_noise(seed: int, stream: str, batch_start: int) -> None:
    """Seed torch's global generators before a batch, for randomized models that draw from them."""
    torch.manual_seed(derive_seed(seed, stream, "model-noise", batch_start))
