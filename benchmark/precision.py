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
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.cache import cache_dir
from benchmark.errors import ThreatbenchError
from benchmark.provenance import device_name
from benchmark.results import atomic_write_json, read_json
from benchmark.stats import wilson_interval

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


@dataclass(frozen=True)
class AttackComparison:
    attack: str
    float32: float
    other: float
    tolerance: float           # the 95% Wilson half-width of the float32 accuracy
    flipped: int               # examples whose outcome differs between the two precisions

    @property
    def within(self) -> bool:
        return abs(self.other - self.float32) <= self.tolerance


def compare_attack(attack: str, float32: Any, other: Any, confidence: float = 0.95) -> AttackComparison:
    """Compare bool [n] per-example outcomes of one attack under float32 and another precision."""
    n = len(float32)
    low, high = wilson_interval(int(float32.sum()), n, confidence)
    return AttackComparison(attack, float(float32.mean()), float(other.mean()), (high - low) / 2,
                            int((float32 != other).sum()))


def check_path(precision: str, device: torch.device) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    return cache_dir() / "precision" / slug / f"{precision}.json"


def write_check(precision: str, device: torch.device, comparisons: list[AttackComparison], *,
                model: dict[str, Any], n: int) -> dict[str, Any]:
    document = {
        "schema": CHECK_SCHEMA, "precision": precision, "device_name": device_name(device),
        "torch": torch.__version__, "model": model, "n": n,
        "passed": all(c.within for c in comparisons),
        "attacks": [{**asdict(c), "within": c.within} for c in comparisons],
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    path = check_path(precision, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, document)
    return document


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


def run_precision_check(defense, dataset: str, precision: str, *, n: int, device: torch.device,
                        model: dict[str, Any], spec=None, progress: bool = True) -> dict[str, Any]:
    """Every white-box attack on the first n examples under float32 and under `precision`; stored."""
    import dataclasses

    from benchmark.evaluate import evaluate
    from benchmark.spec import load_spec

    check_available(precision, device)
    spec = spec or load_spec()
    dataset_spec = spec.dataset(dataset)
    quick = dataclasses.replace(dataset_spec.budgets["quick"], n=n, nattack_n=min(n, 1))
    dataset_spec = dataclasses.replace(dataset_spec, budgets={**dataset_spec.budgets, "quick": quick})
    spec = dataclasses.replace(spec, datasets={**spec.datasets, dataset: dataset_spec})
    results = {p: evaluate(defense, dataset, budget="quick", device=device, spec=spec, progress=progress,
                           families=("white_box",), precision=p, validated_precision_only=False)
               for p in ("float32", precision)}
    names = [m for m in results["float32"].outcomes if m not in ("clean", "pgd_unbounded")]
    comparisons = [compare_attack(m, results["float32"].outcomes[m].correct[0],
                                  results[precision].outcomes[m].correct[0]) for m in ["clean", *names]]
    return write_check(precision, device, comparisons, model=model, n=n)
