"""The result record of one evaluation: what was measured, every number, what it cost, where it ran.

The record's format is docs/record-format.md; its numbers come from `benchmark.evaluation.record_numbers`,
which the verifier recomputes from the per-example file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.attacks.transfer import TransferCache
from benchmark.evaluation.diagnostics import gradient_masking_flags
from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.plan import Conditions, Measurement, Plan
from benchmark.evaluation.record_numbers import (
    measurement_numbers,
    nattack_cascade,
    record_cascade,
    summarize,
    worst_cases,
)
from benchmark.evaluation.results import RESULT_SCHEMA, Outcomes
from benchmark.runtime import provenance
from benchmark.runtime.kernel_tuning import DEFAULT_TUNING, KernelTuning
from benchmark.spec import FAMILIES


@dataclass
class Result:
    record: dict[str, Any]
    outcomes: dict[str, Outcomes] = field(repr=False)

    @property
    def clean_accuracy(self) -> float:
        return self.record["clean"]["accuracy"]

    def accuracy(self, attack: str) -> float:
        return self.record["attacks"][attack]["accuracy"]

    def rows(self) -> list[dict[str, Any]]:
        """One row per measurement, then the worst cases: for printing."""
        rows = [_row("clean", "-", self.record["clean"])]
        for name, attack in self.record["attacks"].items():
            rows.append(_row(name, attack["family"], attack))
        for family, worst in self.record["worst_case"].items():
            if worst is not None:
                rows.append(_row(f"worst case ({family})", family, worst))
        return rows


def _row(name: str, family: str, measurement: dict[str, Any]) -> dict[str, Any]:
    return {
        "measurement": name, "family": family, "accuracy": measurement["accuracy"],
        "interval": None if measurement["interval"] is None else tuple(measurement["interval"]),
        "n": measurement["n"], "cascade": measurement.get("cascade"),
        "seconds": measurement.get("seconds"),
        "median_queries": measurement.get("queries", {}).get("median"),
    }


@dataclass(frozen=True)
class RunInfo:
    """How the evaluation ran, for the record's provenance."""

    total_seconds: float
    examples_file: str | None
    processes: int = 1
    tuning: KernelTuning = DEFAULT_TUNING
    precision_check: dict[str, Any] | None = None   # the check that validated a precision other than float32
    held_out: dict[str, Any] | None = None          # benchmark.evaluation.checks.held_out, as recorded


def build_record(conditions: Conditions, plan: Plan, eval_set, entry: EntryInfo, *, declared: bool,
                 detected: bool, outcomes: dict[str, Outcomes], costs: dict[str, dict[str, Any]],
                 run: RunInfo) -> dict[str, Any]:
    spec, dataset, budget = conditions.spec, conditions.dataset, conditions.budget
    confidence = spec.confidence
    attacks, diagnostics, by_family = measurement_summaries(plan.measurements, outcomes, costs, confidence)
    family_status = plan.family_status
    for family, names in by_family.items():
        family_status[family]["measurements"] = names
    staged = next((m for m in plan.measurements if m.subsample is not None), None)
    complete = all(family_status[f]["status"] == "run" for f in FAMILIES)
    worst = worst_cases(outcomes, by_family, None if staged is None else staged.name,
                        staged is not None and staged.cascade, budget.nattack_n, confidence, complete=complete)
    record = {
        "schema": RESULT_SCHEMA,
        "entry": {**entry.__dict__, "randomized": declared},
        "dataset": dataset.name,
        "spec": {"version": spec.version, "sha256": spec.sha256},
        "threat_model": {"norm": spec.norm, "eps": dataset.eps},
        "budget": budget.name,
        "n": len(eval_set),
        "nattack_n": budget.nattack_n,
        "subset_sha256": eval_set.sha256,
        "seed": conditions.seed,
        "randomness": {"declared": declared, "detected": detected,
                       "attacked_as_randomized": declared or detected,
                       "prediction_repeats": outcomes["clean"].repeats},
        "clean": {**summarize(outcomes["clean"].correct, confidence), **costs["clean"]},
        "attacks": attacks,
        "families": family_status,
        "worst_case": worst,
        "diagnostics": diagnostics,
        "examples_file": run.examples_file,
        "provenance": record_provenance(conditions, plan.transfer_cache, run),
    }
    if run.held_out is not None:
        record["held_out"] = run.held_out
    if staged is not None:
        record["cascade"] = record_cascade(outcomes, by_family, staged.name)
        attacks[staged.name]["cascade"] = nattack_cascade(record["cascade"])
    record["costs"] = cost_summary(record)
    record["flags"] = gradient_masking_flags(record, outcomes)
    return record


def measurement_summaries(measurements: list[Measurement], outcomes: dict[str, Outcomes],
                          costs: dict[str, dict[str, Any]], confidence: float,
                          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """The record's `attacks` and `diagnostics` (name -> summary), and the attacks of each family."""
    by_family: dict[str, list[str]] = {}
    attacks, diagnostics = {}, {}
    for m in measurements:
        if m.family == "clean":
            continue
        summary = measurement_summary(m, outcomes[m.name], costs[m.name], confidence)
        if m.family == "diagnostic":
            diagnostics[m.name] = summary
        else:
            attacks[m.name] = summary
            by_family.setdefault(m.family, []).append(m.name)
    return attacks, diagnostics, by_family


def measurement_summary(measurement: Measurement, outcome: Outcomes, costs: dict[str, Any],
                        confidence: float) -> dict[str, Any]:
    measured_costs = dict(costs)
    checked, missing = measured_costs.pop("gradient_checked", 0), measured_costs.pop("gradient_missing", 0)
    summary = {"family": measurement.family, "params": measurement.params,
               **measurement_numbers(outcome, confidence)}
    summary.update(measured_costs)
    if checked:   # the margin-loss PGD watches for examples without any input gradient
        summary["gradient"] = {"missing": int(missing), "n": int(checked)}
    return summary


def record_provenance(conditions: Conditions, transfer_cache: TransferCache | None, run: RunInfo) -> dict[str, Any]:
    collected = provenance.collect(conditions.device, batch_size=conditions.batches.images,
                                   total_seconds=run.total_seconds, processes=run.processes,
                                   precision=conditions.precision, tuning=run.tuning.as_provenance())
    if transfer_cache is not None:
        collected["transfer_cache"] = {
            "chunk_hits": transfer_cache.hits, "chunk_misses": transfer_cache.misses,
            "crafting_seconds": round(transfer_cache.crafted_seconds, 3)}
    if run.precision_check is not None:
        collected["precision_check"] = run.precision_check
    return collected


def cost_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the evaluation cost: compute seconds (summed over processes) per family, model passes,
    NAttack queries, and where it ran. Wall-clock time is provenance.total_seconds."""
    measurements = {"clean": record["clean"], **record["attacks"], **record["diagnostics"]}
    seconds: dict[str, float] = {}
    for name, m in measurements.items():
        family = "clean" if name == "clean" else m["family"]
        seconds[family] = round(seconds.get(family, 0.0) + m["seconds"], 3)
    provenance = record["provenance"]
    return {
        "seconds": round(sum(seconds.values()), 3), "seconds_by_family": seconds,
        "forward_passes": sum(m["forward_passes"] for m in measurements.values()),
        "backward_passes": sum(m["backward_passes"] for m in measurements.values()),
        "queries": sum(m.get("queries", {}).get("total", 0) for m in measurements.values()),
        "wall_seconds": provenance["total_seconds"], "device_name": provenance["device_name"],
        "processes": provenance["processes"], "precision": provenance["precision"],
    }
