"""Batches of an evaluation set on a device, with their example indices."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from benchmark.attacks.gradient import AttackBatch


def iterate_batches(eval_set, start: int, batch_size: int, device: torch.device,
                    stop: int | None = None, shard=None) -> Iterator[AttackBatch]:
    """Batches from `start` (a multiple of batch_size when sharded); with a `shard`
    (benchmark.distributed.Shard), only the batches that process owns."""
    stop = len(eval_set) if stop is None else min(stop, len(eval_set))
    for batch_start in range(start, stop, batch_size):
        if shard is not None and not shard.owns(batch_start // batch_size):
            continue
        batch_stop = min(batch_start + batch_size, stop)
        items = [eval_set[i] for i in range(batch_start, batch_stop)]
        x = torch.stack([item[0] for item in items]).to(device)
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long, device=device)
        yield AttackBatch(x=x, y=y, indices=torch.arange(batch_start, batch_stop))
