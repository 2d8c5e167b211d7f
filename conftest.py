"""Pytest setup shared by tests/ and the regression replays in benchmark/."""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_configure(config):
    # Under xdist every worker would otherwise start one torch thread per core: on 2 cores with
    # 2 workers, 4 spinning threads made a randomized replay 2.5x slower than with 1 thread each.
    # The environment variable carries the share to the subprocesses that tests start (CLI, torchrun).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, available_cores() // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
