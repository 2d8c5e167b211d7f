"""Sharded evaluation with torchrun: which batches a process owns, and gathering their outcomes.

`torchrun --nproc-per-node N -m benchmark evaluate ...` starts N processes (RANK, WORLD_SIZE and
LOCAL_RANK in the environment). The evaluation subset is cut on the single-process batch grid
(batch b = examples [b * batch_size, (b + 1) * batch_size)), and process r owns the batches with
b % N == r. Every random draw is keyed by (seed, measurement, example index or batch start), so each
batch is computed exactly as in one process, and the gathered per-example outcomes, hence the
record, are identical for every shard layout. Each process checkpoints its own batches; a rerun with
the same layout resumes every shard where it stopped.

Backends: NCCL when the processes use GPUs (one per LOCAL_RANK), gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from benchmark.errors import ThreatbenchError


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, batch_number: int) -> bool:
        return batch_number % self.world_size == self.rank

    def owned_mask(self, n: int, batch_size: int) -> np.ndarray:
        """bool [n]: the examples of the first n whose batch this process owns."""
        return (np.arange(n) // batch_size) % self.world_size == self.rank


SINGLE = Shard()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def device_for_rank(requested: torch.device) -> torch.device:
    """cuda -> cuda:<LOCAL_RANK> under torchrun (one GPU per process); unchanged otherwise."""
    if requested.type == "cuda" and launched_by_torchrun() and requested.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ThreatbenchError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are "
                                   "visible; start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return requested


def current_shard(device: torch.device) -> Shard:
    """This process's shard: joins the torchrun process group when launched by torchrun."""
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def _reduce_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_shards(values: np.ndarray, shard: Shard, device: torch.device) -> np.ndarray:
    """The element-wise sum of an integer array over all processes (identity in one process)."""
    if not shard.sharded:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(_reduce_device(device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def max_over_shards(value: float, shard: Shard, device: torch.device) -> float:
    return _reduce_scalar(value, dist.ReduceOp.MAX, shard, device) if shard.sharded else value


def min_over_shards(value: int, shard: Shard, device: torch.device) -> int:
    """E.g. the batch size every process can fit: all processes must share one batch grid."""
    return int(_reduce_scalar(value, dist.ReduceOp.MIN, shard, device)) if shard.sharded else value


def _reduce_scalar(value: float, op, shard: Shard, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())


def is_main_process() -> bool:
    """False only in the processes of a torchrun group other than rank 0 (they print nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(shard: Shard) -> None:
    if shard.sharded:
        dist.barrier()
