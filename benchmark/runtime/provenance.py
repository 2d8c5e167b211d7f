"""Where a number came from: code version, libraries, hardware, precision, date and time spent."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from typing import Any

import torch

import benchmark
from benchmark import paths
from benchmark.runtime.kernel_tuning import DEFAULT_TUNING


def git_revision() -> str | None:
    """The commit of the threatbench checkout (with '+dirty' for local changes), when there is one."""
    root = paths.REPOSITORY
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "benchmark"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if status.strip() else "")


# The code that runs is the code imported when the process started: a commit made while a long
# evaluation runs must not be credited with its numbers.
REVISION_AT_IMPORT = git_revision()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # The kernels matter for speed: the same 2 cores ran the judge about 3x slower with AVX2 kernels
    # than with AVX512 ones (docs/long-evaluations.md), so a record's time is read with them.
    processor = platform.processor() or platform.machine()
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"cpu ({processor}, {kernels} kernels, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def collect(device: torch.device, *, batch_size: int, total_seconds: float,
            processes: int = 1, precision: str = "float32",
            tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "threatbench": benchmark.__version__,
        "git": REVISION_AT_IMPORT,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": device_name(device),
        "dtype": "float32",          # of the inputs and weights; `precision` is what the passes ran in
        "precision": precision,
        "batch_size": batch_size,
        "processes": processes,
        **(tuning or DEFAULT_TUNING.as_provenance()),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "total_seconds": round(total_seconds, 3),
    }
