"""Pick the largest batch that fits on the device, falling back on out-of-memory before any work.

The probe is one forward and backward pass w.r.t. the input: what every gradient attack step costs
(EOT draws run one after another, so they need no more memory). On an out-of-memory error the batch is halved, with a message, until it fits; the evaluation then runs on
that one batch grid from the start, so its numbers do not depend on where memory ran out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmark.errors import ThreatbenchError


class BatchFitError(ThreatbenchError):
    """Not even one image fits on the device."""


def _probe(defense, x: torch.Tensor, num_classes: int) -> None:
    x = x.detach().requires_grad_(True)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) % num_classes
    loss = F.cross_entropy(defense(x), y, reduction="sum")
    torch.autograd.grad(loss, x)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fit_batch_size(defense, example: torch.Tensor, start: int, *,
                   say: Callable[[str], None] = print) -> int:
    """The largest of start, start/2, ... for which a forward+backward of that batch fits."""
    device, batch = example.device, max(1, start)
    while True:
        try:
            _probe(defense, example[:1].expand(batch, *example.shape[1:]).contiguous(), defense.num_classes)
            _release(device)
            return batch
        except torch.OutOfMemoryError:
            _release(device)
            if batch == 1:
                raise BatchFitError(f"{defense.name}: even one image does not fit in {device} memory; "
                                    "free the device or use a larger one") from None
            say(f"batch of {batch} images does not fit in {device} memory (out of memory); trying "
                f"{batch // 2}")
            batch //= 2
