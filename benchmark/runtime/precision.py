"""Numerical precision of an evaluation: float32 by default, TF32 or bf16 autocast only when validated.

A lower precision can weaken gradient attacks (rounded logits, flat or noisy gradients), which would
overstate robustness. So `evaluate` refuses TF32 and bf16 unless a precision check has shown, on a
trained model on this device (name and torch version), that every white-box attack's accuracy under
that precision stays within the 95% Wilson half-width of its float32 accuracy. The check is
`threatbench precision-check --precision bf16`; its result is stored per device in the cache, and
the precision used is recorded in every record's provenance.

float32 means float32: on a GPU it also switches off TF32 in cuDNN convolutions, which PyTorch
enables by default.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ThreatbenchError
from benchmark.runtime.cache import cache_dir
from benchmark.runtime.files import read_json
from benchmark.runtime.provenance import device_name

PRECISIONS = ("float32", "tf32", "bf16")
CHECK_SCHEMA = "threatbench.precision-check/1"


class PrecisionError(ThreatbenchError):
    """A precision that is unknown, unavailable on this device, or not validated on it."""


def check_available(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise PrecisionError("TF32 is a CUDA matmul and convolution mode; on the CPU it would change "
                             "nothing. Use --precision float32 (or bf16 after a precision check)")


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed forward and backward passes in `precision` (restores the settings after)."""
    check_available(precision, device)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------- validation


def check_path(precision: str, device: torch.device) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    return cache_dir() / "precision" / slug / f"{precision}.json"


def require_validated(precision: str, device: torch.device) -> dict[str, Any] | None:
    """The passing check that allows `precision` on this device (None for float32), else an error."""
    check_available(precision, device)
    if precision == "float32":
        return None
    path = check_path(precision, device)
    how = (f"run `threatbench precision-check --precision {precision} --device {device.type}` first; it "
           "compares every white-box attack on a trained model under both precisions")
    if not path.is_file():
        raise PrecisionError(f"{precision} has not been validated on {device_name(device)}: {how}")
    check = read_json(path)
    if check.get("schema") != CHECK_SCHEMA or check.get("torch") != torch.__version__:
        raise PrecisionError(f"the {precision} check in {path} was made with another torch or schema "
                             f"({check.get('torch')}); {how}")
    if not check.get("passed"):
        failed = [a["attack"] for a in check["attacks"] if not a["within"]]
        raise PrecisionError(f"{precision} failed its check on {device_name(device)}: {', '.join(failed)} "
                             f"moved beyond the statistical tolerance of float32 ({path}); use float32")
    return {"file": str(path), "date": check["date"], "model": check["model"], "n": check["n"]}
