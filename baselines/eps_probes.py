"""Measured explanations for the reproduction page: how a claim's comparison moves with eps.

A claim that does not reproduce at the spec's eps may hold at the papers' own eps (Tramer et al.
and Kurakin et al. report MNIST at eps 0.3, where the spec's Fashion-MNIST eps is 0.1), or nowhere.
A probe measures the claim's two sides on the same n examples at several eps and says where the
claimed direction holds, so the page states a measurement beside the verdict instead of a guess.

Each probe's record (`leaderboard/reproductions/records/<dataset>/probe-<claim>-<name>.json`) keeps
one bit string per eps and measurement (1 = correctly classified), is written after every point
and resumes from the points it holds when the weights, the spec and the subset are unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.attacks.batches import iterate_batches
from benchmark.attacks.gradient import PassCounter, run_white_box
from benchmark.board.cells import with_interval
from benchmark.errors import ThreatbenchError
from benchmark.evaluation.results import atomic_write_json, decode_bits, encode_bits, read_json
from benchmark.evaluation.stats import paired_test, wilson_interval
from benchmark.runtime.provenance import collect
from benchmark.spec import DatasetSpec, Spec

PROBE_SCHEMA = "threatbench.eps-probe/1"
TRANSFER_PREFIX = "transfer/"


@dataclass(frozen=True)
class Side:
    """One side of a claim's comparison: a planned model under one measurement."""

    model: str
    measurement: str           # "clean", a white-box attack, or "transfer/<source>/<attack>"

    def label(self) -> str:
        return f"{self.model} {self.measurement}"


@dataclass(frozen=True)
class EpsProbe:
    """Claim `claim` says `high` is more accurate than `low`; measured at every eps in `eps`, on the
    n examples of the budget whose records the page judges (so its spec-eps row repeats theirs)."""

    claim: str
    name: str
    high: Side
    low: Side
    why: str
    eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)

    def models(self) -> list[str]:
        return sorted({self.high.model, self.low.model})

    def sides(self) -> tuple[Side, Side]:
        return self.high, self.low


def probe_path(records_dir: Path, probe: EpsProbe) -> Path:
    return records_dir / f"probe-{probe.claim}-{probe.name}.json"


# ---------------------------------------------------------------- measuring


def _adversary(side: Side, defenses: dict[str, Any], sources: dict[str, Any], dataset: DatasetSpec,
               eps: float, seed: int, counter: PassCounter) -> Callable[[Any], torch.Tensor]:
    """A function from a batch to the images the side's model classifies."""
    if side.measurement == "clean":
        return lambda batch: batch.x
    if side.measurement.startswith(TRANSFER_PREFIX):
        _, source_name, attack = side.measurement.split("/")
        attacker = sources[source_name]
    else:
        attack, attacker = side.measurement, defenses[side.model]
    params = dataset.attacks[attack].at_eps(eps, dataset.eps)
    return lambda batch: run_white_box(attack, attacker, batch, params, eps, seed, counter)


def measure_side(side: Side, defenses: dict[str, Any], sources: dict[str, Any], eval_set,
                 dataset: DatasetSpec, eps: float, seed: int, counter: PassCounter, *,
                 batch_size: int, device: torch.device) -> np.ndarray:
    """Per-example correctness of `side` at `eps` (deterministic models only)."""
    adversary = _adversary(side, defenses, sources, dataset, eps, seed, counter)
    target = defenses[side.model]
    bits = []
    for batch in iterate_batches(eval_set, 0, batch_size, device):
        bits.append((target.predict(adversary(batch)) == batch.y).cpu().numpy())
    return np.concatenate(bits)


def _identity(probe: EpsProbe, weights: dict[str, str], spec: Spec, eval_set, seed: int) -> dict[str, Any]:
    """What the stored points depend on: a record with other values is measured afresh."""
    return {"weights_sha256": weights, "spec": {"version": spec.version, "sha256": spec.sha256},
            "n": len(eval_set), "subset_sha256": eval_set.sha256, "seed": seed,
            "high": dataclasses.asdict(probe.high), "low": dataclasses.asdict(probe.low)}


def _stored_points(out: Path, identity: dict[str, Any]) -> dict[str, dict[str, str]]:
    if not out.is_file():
        return {}
    stored = read_json(out)
    if not isinstance(stored, dict) or stored.get("schema") != PROBE_SCHEMA:
        return {}
    if any(stored.get(key) != value for key, value in identity.items()):
        return {}
    return {point["eps"]: point["bits"] for point in stored.get("points", [])}


def run_probe(probe: EpsProbe, defenses: dict[str, Any], weights: dict[str, str], sources: dict[str, Any], *,
              dataset: str, spec: Spec, eval_set, out: Path, device: torch.device, seed: int | None = None,
              batch_size: int = 100, progress: bool = True) -> dict[str, Any]:
    """Measure both sides at every eps the record lacks; write the record after each eps."""
    dataset_spec = spec.dataset(dataset)
    seed = spec.seed if seed is None else seed
    for model in probe.models():
        if defenses[model].randomized:
            raise ThreatbenchError(f"probe {probe.claim}-{probe.name}: {model} is randomized; eps probes "
                                   "measure deterministic models only")
    identity = _identity(probe, weights, spec, eval_set, seed)
    done = _stored_points(out, identity)
    counter, started = PassCounter(), time.perf_counter()
    for eps in tqdm(probe.eps, desc=f"probe {probe.claim}-{probe.name}", disable=not progress, leave=False):
        key = f"{eps:g}"
        if key in done:
            continue
        done[key] = {side.label(): encode_bits(measure_side(
            side, defenses, sources, eval_set, dataset_spec, eps, seed, counter,
            batch_size=batch_size, device=device)) for side in probe.sides()}
        record = {"schema": PROBE_SCHEMA, "claim": probe.claim, "name": probe.name, "dataset": dataset,
                  **identity, "spec_eps": dataset_spec.eps,
                  "points": [{"eps": e, "bits": done[e]} for e in sorted(done, key=float)],
                  "provenance": {**collect(device, batch_size=batch_size,
                                           total_seconds=time.perf_counter() - started),
                                 "forward_passes": counter.forward, "backward_passes": counter.backward}}
        atomic_write_json(out, record)
    return read_json(out)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class ProbePoint:
    eps: float
    high: np.ndarray
    low: np.ndarray
    confidence: float = 0.95

    def cell(self, bits: np.ndarray) -> str:
        interval = wilson_interval(int(bits.sum()), bits.size, self.confidence)
        return with_interval({"accuracy": float(bits.mean()), "interval": interval})

    def p_value(self) -> float:
        """Exact paired test (same examples) that `high` is more often correct than `low`."""
        return paired_test(self.high, self.low).p_value

    def holds(self, alpha: float) -> bool:
        return self.p_value() < alpha


def probe_points(record: dict[str, Any], probe: EpsProbe) -> list[ProbePoint]:
    """The record's points for this probe, decoded; [] when it measured something else."""
    if (record.get("high"), record.get("low")) != (dataclasses.asdict(probe.high), dataclasses.asdict(probe.low)):
        return []
    n = record["n"]
    return [ProbePoint(float(point["eps"]), decode_bits(point["bits"][probe.high.label()], n),
                       decode_bits(point["bits"][probe.low.label()], n))
            for point in record["points"]]


def probe_table(probe: EpsProbe, points: list[ProbePoint], spec_eps: float) -> tuple[str, list[str], list[list[str]]]:
    """A sentence saying where the claimed direction holds, and the table behind it."""
    headers = ["eps", probe.high.label(), probe.low.label(), "difference (points)", "paired p (one-sided)"]
    rows = [[f"{p.eps:g}" + (" (spec)" if np.isclose(p.eps, spec_eps) else ""), p.cell(p.high), p.cell(p.low),
             f"{100 * (p.high.mean() - p.low.mean()):+.1f}", _format_p(p.p_value())] for p in points]
    alpha = 0.05 / max(len(points), 1)     # Bonferroni over the eps measured
    holding = [f"{p.eps:g}" for p in points if p.holds(alpha)]
    n = points[0].high.size if points else 0
    where = (f"the claimed direction holds (paired exact test, p < {alpha:.2g}, Bonferroni over "
             f"{len(points)} eps) at eps {', '.join(holding)}" if holding else
             f"the claimed direction holds at none of the {len(points)} eps measured (paired exact test, "
             f"p < {alpha:.2g} each)")
    sentence = (f"Measured across eps (n = {n}, the same examples at every eps): {probe.why} Here {where}."
                + _rising_with_eps(probe, points, alpha))
    return sentence, headers, rows


def _format_p(p: float) -> str:
    return "< 1e-300" if p == 0 else f"{p:.2g}"


def _rising_with_eps(probe: EpsProbe, points: list[ProbePoint], alpha: float) -> str:
    """An attack that fools the model less at a larger eps (same examples, paired test) is a sign of
    a masked gradient or label leaking (Kurakin et al. 2017, §4.3): said where measured."""
    notes = []
    for side, column in ((probe.high, "high"), (probe.low, "low")):
        if side.measurement == "clean":
            continue
        for before, after in itertools.pairwise(points):
            smaller, larger = getattr(before, column), getattr(after, column)
            p_value = paired_test(larger, smaller).p_value
            if p_value < alpha:
                notes.append(f"{side.label()} is more accurate at eps {after.eps:g} than at {before.eps:g} "
                             f"({100 * (larger.mean() - smaller.mean()):+.1f} points, paired p = {_format_p(p_value)})")
    if not notes:
        return ""
    return (" " + "; ".join(notes) + ": a larger perturbation that fools the model less is the mark of a "
            "masked gradient.")
