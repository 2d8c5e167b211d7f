"""How the kernels run: memory format (channels_last) and cuDNN autotuning, both recorded in provenance.

- `channels_last` (NHWC) lets cuDNN use its fastest convolution kernels on recent GPUs. It is a pure
  layout change, but kernels for another layout round differently. `auto` picks it on a GPU for
  models with 2-d convolutions and keeps contiguous NCHW on a CPU, so that the CPU records measured
  before this option existed still replay bit for bit; `threatbench perf` shows what channels_last
  would gain on a given CPU. The choice depends only on the model and the device, so every process
  of a sharded run makes the same one.
- cuDNN autotuning (`torch.backends.cudnn.benchmark`) times several algorithms per input shape and
  keeps the fastest. Algorithms round differently and the timing is noisy, so two processes (or two
  runs) may pick different ones: results then agree only up to float rounding, and a rare borderline
  example may flip. It is therefore opt-in: the judge's default keeps a record bit-reproducible on the
  same device and shard layouts identical. `threatbench perf` shows what each option gains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmark.errors import ThreatbenchError

if TYPE_CHECKING:   # imported where used, so that the CLI can name MEMORY_FORMATS without torch
    import torch
    from torch import nn

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class KernelTuning:
    """The resolved settings of one evaluation (never `auto`)."""

    memory_format: str = "contiguous"
    cudnn_autotune: bool = False

    def as_provenance(self) -> dict[str, object]:
        return {"memory_format": self.memory_format, "cudnn_autotune": self.cudnn_autotune}


DEFAULT_TUNING = KernelTuning()


def has_conv2d(model: nn.Module) -> bool:
    from torch import nn

    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def resolve_tuning(model: nn.Module, device: torch.device, *, memory_format: str = "auto",
                   cudnn_autotune: bool = False) -> KernelTuning:
    """Turn the requested options into concrete ones for this model and device."""
    if memory_format not in MEMORY_FORMATS:
        raise ThreatbenchError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, "
                               f"got {memory_format!r}")
    if cudnn_autotune and device.type != "cuda":
        raise ThreatbenchError("--cudnn-autotune needs a CUDA device (cuDNN runs only there); "
                               "drop the option on this machine")
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cuda" and has_conv2d(model) else "contiguous"
    return KernelTuning(memory_format, bool(cudnn_autotune))


def apply_memory_format(model: nn.Module, tuning: KernelTuning) -> nn.Module:
    """Store the model's 4-d parameters and buffers in the chosen layout (in place; returns it)."""
    import torch

    if tuning.memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model


@contextmanager
def cudnn_autotune_context(tuning: KernelTuning) -> Iterator[None]:
    """Switch cuDNN autotuning to the tuning's setting for the duration, then restore it."""
    import torch

    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = tuning.cudnn_autotune
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
