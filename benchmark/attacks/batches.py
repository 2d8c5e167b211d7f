"""Batches of an evaluation set on a device, with their example indices."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from benchmark.attacks.gradient import AttackBatch


def iterate_batches(eval_set, start: int, batch_size: int, device: torch.device,
                    stop: int | None = None, shard=None) -> Iterator[AttackBatch]:
    """Batches of the examples start..stop (start a multiple of batch_size when sharded); with a
    `shard` (benchmark.runtime.distributed.Shard), only the batches that process owns."""
    stop = len(eval_set) if stop is None else min(stop, len(eval_set))
    for _, batch in iterate_example_batches(eval_set, np.arange(stop), start, batch_size, device, shard):
        yield batch


def iterate_example_batches(eval_set, examples: np.ndarray, start: int, batch_size: int,
                            device: torch.device, shard=None) -> Iterator[tuple[int, AttackBatch]]:
    """(position after the batch, batch) over the listed example indices, from list position `start`;
    batch k is examples[k * batch_size:(k + 1) * batch_size], owned by process k mod world size."""
    for position in range(start, len(examples), batch_size):
        if shard is not None and not shard.owns(position // batch_size):
            continue
        chosen = [int(i) for i in examples[position:position + batch_size]]
        items = [eval_set[i] for i in chosen]
        x = torch.stack([item[0] for item in items]).to(device)
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long, device=device)
        yield position + len(chosen), AttackBatch(x=x, y=y, indices=torch.as_tensor(chosen))
