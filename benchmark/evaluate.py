"""Run the spec on one defense and produce a Result (and, with `out`, a result record on disk).

Measurements are computed batch by batch and checkpointed, so an interrupted evaluation resumes
where it stopped: finished measurements are never recomputed, and the numbers are identical because
every random draw depends only on (seed, measurement, example index or batch start).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import provenance
from benchmark.attacks.gradient import AttackBatch, PassCounter, run_white_box
from benchmark.data import load_evaluation_set
from benchmark.defense import Defense, probe_randomness
from benchmark.diagnostics import gradient_masking_flags
from benchmark.errors import DefenseOutputError
from benchmark.randomness import seed_model_noise
from benchmark.results import (
    RESULT_SCHEMA,
    EvaluationState,
    check_output_path,
    examples_path,
    write_result,
)
from benchmark.spec import DatasetSpec, Spec, load_spec
from benchmark.stats import wilson_interval

DETERMINISTIC_WHITE_BOX = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd")
NOT_RUN_YET = "not run: this version of threatbench implements the white-box family only"


@dataclass
class EntryInfo:
    """Who is being judged; goes into the record's `entry` field."""

    name: str
    kind: str = "user"                      # baseline | submission | reference | user
    architecture: str | None = None
    weights: dict[str, Any] | None = None   # {"file": ..., "sha256": ...} or Hub repo + revision
    paper: str | None = None


@dataclass
class Result:
    record: dict[str, Any]
    outcomes: dict[str, np.ndarray] = field(repr=False)

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
    low, high = measurement["interval"]
    return {
        "measurement": name, "family": family, "accuracy": measurement["accuracy"],
        "interval": (low, high), "seconds": measurement.get("seconds"),
    }


def default_batch_size(dataset: DatasetSpec, device: torch.device) -> int:
    pixels = int(np.prod(dataset.input_shape))
    budget = 4_000_000 if device.type == "cuda" else 200_000   # pixels per batch
    return int(max(1, min(1000, budget // pixels)))


def iterate_batches(eval_set, start: int, batch_size: int, device: torch.device) -> Iterator[AttackBatch]:
    for batch_start in range(start, len(eval_set), batch_size):
        stop = min(batch_start + batch_size, len(eval_set))
        items = [eval_set[i] for i in range(batch_start, stop)]
        x = torch.stack([item[0] for item in items]).to(device)
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long, device=device)
        yield AttackBatch(x=x, y=y, indices=torch.arange(batch_start, stop))


def check_defense_output(defense: Defense, x: torch.Tensor, num_classes: int) -> None:
    if defense.num_classes != num_classes:
        raise DefenseOutputError(
            f"{defense.name}: built for {defense.num_classes} classes, the dataset has {num_classes}"
        )
    defense.predict(x)   # raises on a wrong shape or non-finite logits


def configuration_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def state_path_for(out: Path | None) -> Path | None:
    return None if out is None else out.with_name(f".{out.stem}.state.json")


class _Evaluation:
    """The moving parts of one evaluation; `evaluate()` is the public entry point."""

    def __init__(self, defense, spec, dataset, budget, seed, device, batch_size, eval_set, state,
                 progress, checkpoint_seconds):
        self.defense, self.spec, self.dataset, self.budget = defense, spec, dataset, budget
        self.seed, self.device, self.batch_size, self.eval_set = seed, device, batch_size, eval_set
        self.state, self.progress, self.checkpoint_seconds = state, progress, checkpoint_seconds

    def measure(self, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        outcomes, finished, costs = self.state.progress(name)
        if self.state.done(name):
            return outcomes, costs
        counter = PassCounter(costs.get("forward_passes", 0), costs.get("backward_passes", 0))
        seconds = costs.get("seconds", 0.0)
        last_save = time.monotonic()
        bar = tqdm(total=len(self.eval_set), initial=finished, desc=f"{name:>9}", unit="img",
                   disable=not self.progress, leave=False)
        try:
            for batch in iterate_batches(self.eval_set, finished, self.batch_size, self.device):
                started = time.perf_counter()
                predictions = self._predict_measurement(name, batch, counter)
                correct = (predictions == batch.y).cpu().numpy()
                seconds += time.perf_counter() - started
                first, last = int(batch.indices[0]), int(batch.indices[-1]) + 1
                outcomes[first:last] = correct
                finished = last
                bar.update(last - first)
                if time.monotonic() - last_save > self.checkpoint_seconds:
                    self.state.update(name, outcomes, finished, _costs(counter, seconds), done=False)
                    last_save = time.monotonic()
        except BaseException:
            # Keep what is finished: rerunning the same command resumes from here.
            self.state.update(name, outcomes, finished, _costs(counter, seconds), done=False)
            raise
        finally:
            bar.close()
        costs = _costs(counter, seconds)
        self.state.update(name, outcomes, finished, costs, done=True)
        return outcomes, costs

    def _predict_measurement(self, name: str, batch: AttackBatch, counter: PassCounter) -> torch.Tensor:
        seed_model_noise(self.seed, name, int(batch.indices[0]))
        x = batch.x
        if name != "clean":
            params = self.dataset.attacks[name]
            x = run_white_box(name, self.defense, batch, params, self.dataset.eps, self.seed, counter)
        counter.add(x.shape[0], backward=False)
        predictions = self.defense.predict(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return predictions


def _costs(counter: PassCounter, seconds: float) -> dict[str, Any]:
    return {"seconds": round(seconds, 3), "forward_passes": counter.forward,
            "backward_passes": counter.backward}


def _measurement(outcomes: np.ndarray, confidence: float) -> dict[str, Any]:
    correct, n = int(outcomes.sum()), int(outcomes.size)
    low, high = wilson_interval(correct, n, confidence)
    return {"accuracy": correct / n, "correct": correct, "n": n, "interval": [low, high]}


def evaluate(defense: Defense, dataset: str, *, budget: str = "quick", seed: int | None = None,
             out: str | Path | None = None, device: str | torch.device | None = None,
             batch_size: int | None = None, data_dir: str | Path | None = None,
             entry: EntryInfo | None = None, spec: Spec | None = None, progress: bool = True,
             checkpoint_seconds: float = 30.0) -> Result:
    """Judge `defense` on `dataset` under the spec; write the record to `out` when given.

    With `out`, progress is checkpointed beside it and a rerun of the same call resumes.
    """
    started = time.time()
    spec = spec or load_spec()
    dataset_spec = spec.dataset(dataset)
    budget_spec = dataset_spec.budget(budget)
    seed = spec.seed if seed is None else int(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = check_output_path(out) if out is not None else None
    batch_size = batch_size or default_batch_size(dataset_spec, device)
    preprocessing = dataset_spec.preprocessing.as_dict() if dataset_spec.preprocessing else None
    eval_set = load_evaluation_set(dataset, budget_spec.n, data_dir, imagenet_preprocessing=preprocessing)

    defense = defense.to(device)
    probe_batch = next(iterate_batches(eval_set, 0, min(batch_size, 64), device))
    check_defense_output(defense, probe_batch.x, dataset_spec.num_classes)
    detected = probe_randomness(defense, probe_batch.x)
    randomized = defense.randomized or detected
    attacks = list(DETERMINISTIC_WHITE_BOX) + (["epgd"] if randomized else [])

    entry = entry or EntryInfo(name=defense.name)
    key = configuration_key(spec=spec.sha256, dataset=dataset, budget=budget, n=budget_spec.n,
                            subset=eval_set.sha256, seed=seed, batch_size=batch_size,
                            device=device.type, entry=entry.__dict__, attacks=attacks)
    state = EvaluationState.open(state_path_for(out), key, budget_spec.n)
    run = _Evaluation(defense, spec, dataset_spec, budget_spec, seed, device, batch_size, eval_set,
                      state, progress, checkpoint_seconds)

    outcomes, costs = {}, {}
    for name in ["clean", *attacks]:
        outcomes[name], costs[name] = run.measure(name)

    record = build_record(
        spec=spec, dataset_spec=dataset_spec, budget=budget_spec.name, seed=seed, eval_set=eval_set,
        entry=entry, declared=defense.randomized, detected=detected, attacks=attacks,
        outcomes=outcomes, costs=costs, device=device, batch_size=batch_size,
        total_seconds=time.time() - started,
        examples_file=examples_path(out).name if out is not None else None,
    )
    if out is not None:
        write_result(out, record, outcomes)
        state.remove()
    return Result(record=record, outcomes=outcomes)


def build_record(*, spec: Spec, dataset_spec: DatasetSpec, budget: str, seed: int, eval_set,
                 entry: EntryInfo, declared: bool, detected: bool, attacks: list[str],
                 outcomes: dict[str, np.ndarray], costs: dict[str, dict[str, Any]],
                 device: torch.device, batch_size: int, total_seconds: float,
                 examples_file: str | None) -> dict[str, Any]:
    confidence = spec.confidence
    clean = {**_measurement(outcomes["clean"], confidence), **costs["clean"]}
    attack_records = {
        name: {
            "family": "white_box",
            "params": dataset_spec.attacks[name].as_dict(),
            **_measurement(outcomes[name], confidence),
            **costs[name],
        }
        for name in attacks
    }
    white_box_worst = np.logical_and.reduce([outcomes["clean"], *(outcomes[a] for a in attacks)])
    record = {
        "schema": RESULT_SCHEMA,
        "entry": {**entry.__dict__, "randomized": declared},
        "dataset": dataset_spec.name,
        "spec": {"version": spec.version, "sha256": spec.sha256},
        "threat_model": {"norm": spec.norm, "eps": dataset_spec.eps},
        "budget": budget,
        "n": len(eval_set),
        "subset_sha256": eval_set.sha256,
        "seed": seed,
        "randomness": {"declared": declared, "detected": detected,
                       "attacked_as_randomized": declared or detected},
        "clean": clean,
        "attacks": attack_records,
        "families": {
            "white_box": {"status": "run", "attacks": attacks},
            "transfer": {"status": "not_run", "reason": NOT_RUN_YET},
            "adaptive": {"status": "not_run", "reason": NOT_RUN_YET},
        },
        "worst_case": {
            "white_box": {**_measurement(white_box_worst, confidence),
                          "definition": "correct on the clean input and under every white-box attack"},
            "transfer": None,
            "adaptive": None,
            "all": None,
        },
        "examples_file": examples_file,
        "provenance": provenance.collect(device, batch_size=batch_size, total_seconds=total_seconds),
    }
    record["flags"] = gradient_masking_flags(record)
    return record
