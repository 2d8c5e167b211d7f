"""What the consistency checks (`benchmark.evaluation.checks`) ask: the probe, and the calls compared.

The probe holds the clean inputs, one neighbour per input (a corner of the eps ball aimed at the
decision boundary) and the two history batches built from both; the calls are the ways a defense is
asked: as an attack asks (forward under grad), as the judge asks (predict under no_grad), and in
other batches and orders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmark.models.defense import Defense
from benchmark.runtime.randomness import example_generator, per_example_sign

GRAD_MODE = "grad-mode"
HISTORY = "history"
BATCH = "batch"

STREAM = "checks"
FIX = ("a defense must answer the same input the same way in every call: no caches, call counters, "
       "batch statistics or branches on torch.is_grad_enabled()")

Labels = Callable[[], torch.Tensor]


@dataclass
class Probe:
    """Clean inputs, one aimed neighbour per input, and the two history batches.

    `first` = clean inputs of the even rows + neighbours of the odd rows, `second` = the reverse, so
    that asking `first` then `second` queries half of the inputs clean first, half neighbour first.
    """

    x: torch.Tensor
    clean_logits: torch.Tensor      # forward under grad on x, the input requiring grad
    neighbours: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    clean_rows: torch.Tensor        # where x[i] sits in `pool`

    @classmethod
    def build(cls, defense: Defense, x: torch.Tensor, eps: float, seed: int) -> Probe:
        neighbours, clean_logits = aimed_neighbours(defense, x, eps, seed)
        even, odd = torch.arange(0, len(x), 2), torch.arange(1, len(x), 2)
        first = torch.cat([x[even], neighbours[odd]])
        second = torch.cat([neighbours[even], x[odd]])
        clean_rows = torch.empty(len(x), dtype=torch.long)
        clean_rows[even] = torch.arange(len(even))
        clean_rows[odd] = len(x) + len(even) + torch.arange(len(odd))
        return cls(x, clean_logits, neighbours, first, second, clean_rows.to(x.device))

    @property
    def pool(self) -> torch.Tensor:
        return torch.cat([self.first, self.second])


def aimed_neighbours(defense: Defense, x: torch.Tensor, eps: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One corner of the eps ball per input (clipped to [0, 1]) and forward-under-grad logits of x.

    The corner steps against the gradient of the top-two logit margin (one FGSM step), so that the
    honest answer changes for many inputs: a memoriser is only caught where it does. Pixels without a
    gradient (a cut gradient path, a zero) get a seeded random sign; no gradient is needed to pass.
    """
    x_var = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = defense(x_var)
        gradient = _margin_gradient(logits, x_var)
    indices = torch.arange(x.shape[0])
    direction = per_example_sign(tuple(x.shape[1:]), indices, seed, f"{STREAM}/neighbour-sign").to(x)
    if gradient is not None:
        aimed = -torch.nan_to_num(gradient).sign()
        direction = torch.where(aimed != 0, aimed, direction)
    return (x + eps * direction).clamp(0.0, 1.0), logits.detach()


def _margin_gradient(logits: torch.Tensor, x_var: torch.Tensor) -> torch.Tensor | None:
    if not logits.requires_grad or logits.shape[1] < 2:
        return None
    top = logits.topk(2, dim=1).values
    (gradient,) = torch.autograd.grad((top[:, 0] - top[:, 1]).sum(), x_var, allow_unused=True)
    return gradient


# ---------------------------------------------------------------- the calls compared


def forward_under_grad(defense: Defense, x: torch.Tensor) -> torch.Tensor:
    """Logits as a white-box attack gets them: grad enabled, the input requiring grad."""
    with torch.enable_grad():
        return defense(x.detach().requires_grad_(True)).detach()


def forward_no_grad(defense: Defense, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return defense(x)


def predict(defense: Defense, x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    with torch.enable_grad() if grad else torch.no_grad():
        return defense.predict(x)


def predict_in_chunks(defense: Defense, x: torch.Tensor, order: torch.Tensor,
                      sizes: list[int]) -> torch.Tensor:
    """Labels of x asked in the order `order`, `sizes` rows per call, put back in x's order."""
    shuffled = torch.cat([predict(defense, chunk) for chunk in x[order].split(sizes)])
    labels = torch.empty_like(shuffled)
    labels[order] = shuffled
    return labels


def odd_chunk_sizes(total: int) -> list[int]:
    """1, 1, 1, 3, 5, 7, ... rows per call (the last one what is left): three inputs alone, then
    batches of sizes no attack uses."""
    sizes, size = [], 1
    while sum(sizes) < total:
        sizes.append(min(size, total - sum(sizes)))
        size = 1 if len(sizes) < 3 else size + 2
    return sizes


def seeded_order(n: int, seed: int, purpose: str, index: int, device: torch.device) -> torch.Tensor:
    """A permutation of range(n) drawn from (seed, purpose, index): the same order in every run."""
    return torch.randperm(n, generator=example_generator(seed, f"{STREAM}/{purpose}", index)).to(device)
