"""How many images one batch of an evaluation holds.

A batch size never changes a deterministic entry's numbers, only its speed: the largest that fits is
used. A randomized entry's model noise is seeded per batch, so the spec fixes its batches instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.models.defense import Defense
from benchmark.runtime.distributed import Shard, min_over_shards
from benchmark.runtime.memory import fit_batch_size
from benchmark.spec import DatasetSpec, Spec

GPU_MAX_BATCH = 1024   # the largest batch tried on a GPU; halved until it fits (benchmark.runtime.memory)


@dataclass(frozen=True)
class BatchSizes:
    images: int        # every measurement's batch but NAttack's
    populations: int   # NAttack's: images whose populations share one forward batch


def default_batch_size(dataset: DatasetSpec, device: torch.device) -> int:
    pixels = int(np.prod(dataset.input_shape))
    budget = 4_000_000 if device.type == "cuda" else 200_000   # pixels per batch
    return int(max(1, min(1000, budget // pixels)))


def nattack_batch_size(dataset: DatasetSpec, device: torch.device) -> int:
    """Images whose populations share one forward batch."""
    population_pixels = dataset.nattack.population * int(np.prod(dataset.input_shape))
    budget = 200_000_000 if device.type == "cuda" else 8_000_000
    return int(max(1, min(64, budget // population_pixels)))


def choose_batch_sizes(spec: Spec, dataset: DatasetSpec, defense: Defense, probe: torch.Tensor, *,
                       examples: int, requested: int | None, randomized: bool, device: torch.device,
                       shard: Shard) -> BatchSizes:
    """The spec's fixed batches for a randomized entry; otherwise `requested` (--batch-size), which
    caps NAttack's batches too, or else the largest batch that fits (on a GPU) or the default."""
    fixed = spec.randomized.batch_size if randomized else None
    if fixed is not None:
        if requested not in (None, fixed):
            tqdm.write(f"{defense.name}: randomized entries run in the spec's fixed batches of "
                       f"{fixed} (their noise is seeded per batch); --batch-size ignored")
        return BatchSizes(fixed, spec.randomized.nattack_batch_size)
    images = requested or default_batch_size(dataset, device)
    if requested is None and device.type == "cuda":
        images = min_over_shards(fit_batch_size(defense, probe, min(examples, GPU_MAX_BATCH), say=tqdm.write),
                                 shard, device)
    populations = nattack_batch_size(dataset, device)
    if requested:
        populations = min(populations, requested)
    return BatchSizes(images, populations)
