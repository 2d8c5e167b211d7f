"""`threatbench precision-check`: every white-box attack under float32 and under a faster precision
(tf32, bf16) on the same examples; the precision may be used only if no attack moves beyond the
statistical tolerance of float32. The check is stored where `runtime.precision.require_validated`
reads it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmark.evaluation.loop import evaluate
from benchmark.evaluation.stats import wilson_interval
from benchmark.runtime.files import atomic_write_json
from benchmark.runtime.precision import CHECK_SCHEMA, check_available, check_path
from benchmark.runtime.provenance import device_name
from benchmark.spec import load_spec


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


def run_precision_check(defense, dataset: str, precision: str, *, n: int, device: torch.device,
                        model: dict[str, Any], spec=None, progress: bool = True) -> dict[str, Any]:
    """Every white-box attack on the first n examples under float32 and under `precision`; stored."""
    check_available(precision, device)
    spec = spec or load_spec()
    quick = dataclasses.replace(spec.dataset(dataset).budgets["quick"], n=n, nattack_n=min(n, 1))
    spec = spec.with_budget(dataset, quick)
    results = {p: evaluate(defense, dataset, budget="quick", device=device, spec=spec, progress=progress,
                           families=("white_box",), precision=p, validated_precision_only=False)
               for p in ("float32", precision)}
    names = [m for m in results["float32"].outcomes if m not in ("clean", "pgd_unbounded")]
    comparisons = [compare_attack(m, results["float32"].outcomes[m].correct[0],
                                  results[precision].outcomes[m].correct[0]) for m in ["clean", *names]]
    return write_check(precision, device, comparisons, model=model, n=n)
