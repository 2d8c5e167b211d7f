"""Batches of an evaluation set on a device, with their example indices."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from benchmark.attacks.gradient import AttackBatch


def iterate_batches(eval_set, start: int, batch_size: int, device: torch.device,
                    stop: int | None = None) -> Iterator[AttackBatch]:
    stop = len(eval_set) if stop is None else min(stop, len(eval_set))
    for batch_start in range(start, stop, batch_size):
        batch_stop = min(batch_start + batch_size, stop)
        items = [eval_set[i] for i in range(batch_start, batch_stop)]
        x = torch.stack([item[0] for item in items]).to(device)
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long, device=device)
        yield AttackBatch(x=x, y=y, indices=torch.arange(batch_start, batch_stop))
