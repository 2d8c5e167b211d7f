"""Run the spec on one defense and produce a Result (and, with `out`, a result record on disk).

An evaluation is a list of measurements (`benchmark.evaluation.plan`). Each is computed batch by
batch and checkpointed, so an interrupted evaluation resumes where it stopped: finished measurements
are never recomputed, and the numbers are identical because every random draw depends only on
(seed, measurement, example index or batch start).

Randomized defenses (declared or detected) are attacked with EOT on every gradient, and every
accuracy is the mean over repeated `predict` calls, whose spread is recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.attacks.batches import iterate_batches, iterate_example_batches
from benchmark.attacks.gradient import AttackBatch, PassCounter
from benchmark.attacks.transfer import TransferSource
from benchmark.data import load_evaluation_set
from benchmark.evaluation.batch_sizes import choose_batch_sizes, default_batch_size
from benchmark.evaluation.cascade import survivors
from benchmark.evaluation.checks import check_defense_is_consistent
from benchmark.evaluation.checks.held_out import check_not_fitted_to_evaluation_images, not_checked
from benchmark.evaluation.checks.output import check_defense_output
from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.plan import (
    Conditions,
    Measurement,
    Plan,
    check_families,
    plan_measurements,
)
from benchmark.evaluation.record import Result, RunInfo, build_record
from benchmark.evaluation.record_numbers import PRIOR_FAMILIES
from benchmark.evaluation.results import (
    EvaluationState,
    Outcomes,
    check_output_path,
    examples_path,
    write_result,
)
from benchmark.models.defense import Defense, probe_randomness
from benchmark.models.smoothing import SmoothedDefense
from benchmark.runtime.distributed import (
    SINGLE,
    Shard,
    barrier,
    current_shard,
    device_for_rank,
    max_over_shards,
    sum_over_shards,
)
from benchmark.runtime.kernel_tuning import (
    KernelTuning,
    apply_memory_format,
    cudnn_autotune_context,
    resolve_tuning,
)
from benchmark.runtime.precision import check_available, precision_context, require_validated
from benchmark.runtime.randomness import seed_model_noise
from benchmark.spec import FAMILIES, DatasetSpec, Spec, load_spec

# What the adaptive family's cascade attacks the survivors of, and what `examples` restricts.
BEFORE_ADAPTIVE = ("clean", *PRIOR_FAMILIES)


def evaluate(defense: Defense, dataset: str, *, budget: str = "quick", seed: int | None = None,
             out: str | Path | None = None, device: str | torch.device | None = None,
             batch_size: int | None = None, data_dir: str | Path | None = None,
             entry: EntryInfo | None = None, spec: Spec | None = None, progress: bool = True,
             checkpoint_seconds: float = 30.0, sources: list[TransferSource] | None = None,
             families: tuple[str, ...] = FAMILIES, precision: str = "float32",
             validated_precision_only: bool = True, memory_format: str = "auto",
             cudnn_autotune: bool = False, cascade: bool | None = None,
             adaptive_examples: np.ndarray | None = None, checkpoint_dir: str | Path | None = None,
             consistency_check: bool = True, examples: np.ndarray | None = None) -> Result:
    """Judge `defense` on `dataset` under the spec; write the record to `out` when given.

    `sources` are the held-out transfer sources (default: the spec's own, hash-checked); `families`
    limits what is run (the others are recorded as not run). With `out`, a rerun resumes.
    `precision` other than float32 needs a passing `threatbench precision-check` on this device
    (benchmark.runtime.precision), which alone sets `validated_precision_only=False`; `memory_format`
    and `cudnn_autotune` are the kernel options of benchmark.runtime.kernel_tuning.
    `cascade` overrides the spec's (False: NAttack attacks its whole subsample, a diagnostic);
    `adaptive_examples` (bool [n]) replaces the seeded adaptive subsample (the regression replay).
    `checkpoint_dir` holds the checkpoint instead of a hidden file beside `out`, to be committed and
    resumed elsewhere (docs/long-evaluations.md); `consistency_check=False` skips the admission checks
    (benchmark.evaluation.checks), only for a replay of an entry already checked.
    `examples` (sorted indices) limits clean, white-box and transfer to those of the n (the regression
    replay's sample; the other outcome columns stay 0).
    """
    started = time.time()
    spec = spec or load_spec()
    dataset_spec = spec.dataset(dataset)
    budget_spec = dataset_spec.budget(budget).for_entry(smoothed=isinstance(defense, SmoothedDefense))
    seed = spec.seed if seed is None else int(seed)
    device = device_for_rank(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    shard = current_shard(device)
    precision_check = _allowed_precision(precision, device, validated_only=validated_precision_only)
    out = check_output_path(out) if out is not None else None
    entry = entry or EntryInfo(name=defense.name)
    check_families(families)
    eval_set = _load_evaluation_set(dataset, dataset_spec, budget_spec.n, data_dir)
    defense, tuning = _placed(defense, device, memory_format=memory_format, cudnn_autotune=cudnn_autotune)
    probe = _probe_batch(eval_set, dataset_spec, batch_size, device)
    detected, held_out = _admitted(defense, probe, dataset, dataset_spec, len(eval_set), spec, seed, device,
                                   data_dir, consistency_check=consistency_check)
    randomized = defense.randomized or detected
    batches = choose_batch_sizes(spec, dataset_spec, defense, probe, examples=len(eval_set), requested=batch_size,
                                 randomized=randomized, device=device, shard=shard)
    conditions = Conditions(spec, dataset_spec, budget_spec, seed, device, precision, randomized, batches)
    plan = plan_measurements(conditions, defense, eval_set, entry, families=families, sources=sources,
                             cascade=cascade, adaptive_examples=adaptive_examples)

    state = open_checkpoint(conditions, plan, eval_set, entry, tuning, dataset=dataset, budget=budget,
                            examples=examples, out=out, shard=shard, checkpoint_dir=checkpoint_dir)
    run = _Evaluation(defense, eval_set, state, seed=seed, device=device, repeats=conditions.repeats,
                      progress=progress, checkpoint_seconds=checkpoint_seconds, shard=shard)
    outcomes, costs = run.measure_all(plan.measurements, examples, precision=precision, tuning=tuning)
    run_info = RunInfo(total_seconds=max_over_shards(time.time() - started, shard, device),
                       examples_file=None if out is None else examples_path(out).name,
                       processes=shard.world_size, tuning=tuning, precision_check=precision_check, held_out=held_out)
    record = build_record(conditions, plan, eval_set, entry, declared=defense.randomized, detected=detected,
                          outcomes=outcomes, costs=costs, run=run_info)
    _publish(record, outcomes, out, shard, state)
    return Result(record=record, outcomes=outcomes)


def _admitted(defense: Defense, probe: torch.Tensor, dataset: str, dataset_spec: DatasetSpec, n: int, spec: Spec,
              seed: int, device: torch.device, data_dir: str | Path | None, *,
              consistency_check: bool) -> tuple[bool, Any]:
    """Run the admission checks before any attack: (randomness detected, the held-out check's result)."""
    detected = admit_defense(defense, probe, dataset_spec, seed, consistency_check=consistency_check)
    if not consistency_check:
        return detected, not_checked("a replay of a record whose entry was checked")
    return detected, check_not_fitted_to_evaluation_images(defense, dataset, n, data_dir, seed=seed, device=device,
                                                           confidence=spec.confidence)


def _allowed_precision(precision: str, device: torch.device, *, validated_only: bool) -> dict[str, Any] | None:
    """The passing `threatbench precision-check` that allows `precision` here (None for float32)."""
    if validated_only:
        return require_validated(precision, device)
    return check_available(precision, device)


def _load_evaluation_set(dataset: str, dataset_spec: DatasetSpec, n: int, data_dir: str | Path | None):
    preprocessing = dataset_spec.preprocessing.as_dict() if dataset_spec.preprocessing else None
    return load_evaluation_set(dataset, n, data_dir, imagenet_preprocessing=preprocessing)


def _probe_batch(eval_set, dataset: DatasetSpec, batch_size: int | None, device: torch.device) -> torch.Tensor:
    """The first clean images (at most 64), on which the defense is checked before any attack."""
    return next(iterate_batches(eval_set, 0, min(batch_size or default_batch_size(dataset, device), 64), device)).x


def _placed(defense: Defense, device: torch.device, *, memory_format: str,
            cudnn_autotune: bool) -> tuple[Defense, KernelTuning]:
    """The defense on the evaluation's device, in the memory format its kernels run fastest in."""
    defense = defense.to(device)
    tuning = resolve_tuning(defense, device, memory_format=memory_format, cudnn_autotune=cudnn_autotune)
    apply_memory_format(defense, tuning)
    return defense, tuning


def admit_defense(defense: Defense, probe: torch.Tensor, dataset: DatasetSpec, seed: int, *,
                  consistency_check: bool) -> bool:
    """Refuse a defense whose outputs break the interface or, before any attack, whose answers depend
    on grad mode, batch or history; returns whether its predictions were found random."""
    check_defense_output(defense, probe, dataset.num_classes)
    detected = probe_randomness(defense, probe)
    if consistency_check:
        check_defense_is_consistent(defense, probe, eps=dataset.eps, seed=seed,
                                    randomized=defense.randomized or detected)
    return detected


def configuration_key(conditions: Conditions, plan: Plan, eval_set, entry: EntryInfo, tuning: KernelTuning, *,
                      dataset: str, budget: str, examples: np.ndarray | None, shard: Shard) -> str:
    """What a checkpoint is valid for: a resumed evaluation must be the same evaluation."""
    return _hash_parts(
        spec=conditions.spec.sha256, dataset=dataset, budget=budget, n=conditions.budget.n,
        subset=eval_set.sha256, seed=conditions.seed, batch_size=conditions.batches.images,
        device=conditions.device.type, entry=entry.__dict__,
        **({"precision": conditions.precision} if conditions.precision != "float32" else {}),
        **tuning.as_provenance(),
        measurements=[(m.name, m.n, m.params) for m in plan.measurements],
        **({"examples": [int(i) for i in examples]} if examples is not None else {}),
        **({"shard": [shard.rank, shard.world_size]} if shard.sharded else {}))


def _hash_parts(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def open_checkpoint(conditions: Conditions, plan: Plan, eval_set, entry: EntryInfo, tuning: KernelTuning, *,
                    dataset: str, budget: str, examples: np.ndarray | None, out: Path | None, shard: Shard,
                    checkpoint_dir: str | Path | None) -> EvaluationState:
    """The evaluation's checkpoint (none without `out`), resumed when it was left by the same evaluation."""
    key = configuration_key(conditions, plan, eval_set, entry, tuning, dataset=dataset, budget=budget,
                            examples=examples, shard=shard)
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    return EvaluationState.open(state_path_for(out, shard, checkpoint_dir), key)


def state_path_for(out: Path | None, shard: Shard = SINGLE, checkpoint_dir: Path | None = None) -> Path | None:
    """The checkpoint: hidden beside the record, or `<checkpoint_dir>/<record stem>.state.json` (a
    directory meant to be committed, docs/long-evaluations.md); one per process when sharded."""
    if out is None:
        return None
    part = f".shard{shard.rank}of{shard.world_size}" if shard.sharded else ""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir) / f"{out.stem}{part}.state.json"
    return out.with_name(f".{out.stem}{part}.state.json")


def _publish(record: dict[str, Any], outcomes: dict[str, Outcomes], out: Path | None, shard: Shard,
             state: EvaluationState) -> None:
    """Write the record (once, from the main process), then drop the checkpoint."""
    if out is not None and shard.is_main:
        write_result(out, record, outcomes)
    barrier(shard)   # the record is on disk before any process drops its checkpoint
    state.remove()


def drop_empty_queries(outcomes: dict[str, Outcomes]) -> None:
    """Only NAttack spends queries: the other measurements record none."""
    for outcome in outcomes.values():
        if outcome.queries is not None and not outcome.queries.any():
            outcome.queries = None


# ---------------------------------------------------------------- running measurements


class _Evaluation:
    """The moving parts of one evaluation's measuring; `evaluate()` is the public entry point."""

    def __init__(self, defense, eval_set, state, *, seed, device, repeats, progress, checkpoint_seconds,
                 shard: Shard = SINGLE):
        self.defense, self.eval_set, self.state = defense, eval_set, state
        self.seed, self.device, self.repeats = seed, device, repeats
        self.progress, self.checkpoint_seconds = progress, checkpoint_seconds
        self.shard = shard

    def measure_all(self, measurements: list[Measurement], examples: np.ndarray | None, *, precision: str,
                    tuning: KernelTuning) -> tuple[dict[str, Outcomes], dict[str, dict[str, Any]]]:
        """Every measurement in order, each on every process's examples."""
        if examples is not None:
            for m in measurements:
                if m.family in BEFORE_ADAPTIVE:
                    m.examples = np.asarray(examples)
        outcomes, costs = {}, {}
        with precision_context(precision, self.device), cudnn_autotune_context(tuning):
            for m in measurements:   # the same order in every process: gather is collective
                if m.subsample is not None:
                    m.examples = adaptive_targets(m, outcomes, measurements)
                outcomes[m.name], costs[m.name] = self.gather(*self.measure(m))
                if m.subsample is not None:
                    outcomes[m.name] = with_cascade_masks(outcomes[m.name], m, outcomes["clean"])
        drop_empty_queries(outcomes)
        return outcomes, costs

    def measure(self, measurement: Measurement) -> tuple[Outcomes, dict[str, Any]]:
        name, n = measurement.name, measurement.n
        positions = measurement.positions()
        outcomes, finished, costs = self.state.progress(name, self.repeats, n)
        if self.state.done(name):
            return outcomes, costs
        counter = PassCounter(costs.get("forward_passes", 0), costs.get("backward_passes", 0),
                              costs.get("gradient_checked", 0), costs.get("gradient_missing", 0))
        seconds = costs.get("seconds", 0.0)
        last_save = time.monotonic()
        owned = self.shard.owned_mask(len(positions), measurement.batch_size)
        bar = tqdm(total=int(owned.sum()), initial=int(owned[:finished].sum()), desc=f"{name[:28]:>28}",
                   unit="img", disable=not self.progress or not self.shard.is_main, leave=False)
        try:
            for stop, batch in iterate_example_batches(self.eval_set, positions, finished,
                                                       measurement.batch_size, self.device, shard=self.shard):
                started = time.perf_counter()
                indices = batch.indices.numpy()
                correct, queries = self._measure_batch(measurement, batch, counter)
                outcomes.correct[:, indices] = correct
                if queries is not None:
                    outcomes.queries[indices] = queries.cpu().numpy()
                seconds += time.perf_counter() - started
                bar.update(len(indices))
                finished = stop
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

    def gather(self, outcomes: Outcomes, costs: dict[str, Any]) -> tuple[Outcomes, dict[str, Any]]:
        """Every process's examples of one measurement (each process contributes its own batches)."""
        if not self.shard.sharded:
            return outcomes, costs
        correct = sum_over_shards(outcomes.correct.astype(np.int64), self.shard, self.device) > 0
        queries = sum_over_shards(outcomes.queries, self.shard, self.device)
        counts = np.array([costs["forward_passes"], costs["backward_passes"], round(costs["seconds"] * 1e6),
                           costs.get("gradient_checked", 0), costs.get("gradient_missing", 0)])
        forward, backward, microseconds, checked, missing = sum_over_shards(counts, self.shard, self.device)
        gathered = {"seconds": round(microseconds / 1e6, 3), "forward_passes": int(forward),
                    "backward_passes": int(backward)}
        if checked:
            gathered.update(gradient_checked=int(checked), gradient_missing=int(missing))
        return Outcomes(correct, queries), gathered

    def _measure_batch(self, measurement: Measurement, batch: AttackBatch, counter: PassCounter):
        seed_model_noise(self.seed, measurement.name, int(batch.indices[0]))
        x, queries = measurement.adversary(batch, counter)
        rows = []
        for _ in range(self.repeats):
            counter.add(x.shape[0], backward=False)
            rows.append((self.defense.predict(x) == batch.y).cpu().numpy())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return np.stack(rows), queries


def _costs(counter: PassCounter, seconds: float) -> dict[str, Any]:
    costs = {"seconds": round(seconds, 3), "forward_passes": counter.forward,
             "backward_passes": counter.backward}
    if counter.gradient_checked:
        costs.update(gradient_checked=counter.gradient_checked, gradient_missing=counter.gradient_missing)
    return costs


def adaptive_targets(measurement: Measurement, outcomes: dict[str, Outcomes],
                     measurements: list[Measurement]) -> np.ndarray:
    """The examples the adaptive family attacks: its subsample, and with the cascade only the
    examples correct in at least one repeat under clean and every white-box and transfer attack."""
    chosen = measurement.subsample.copy()
    if measurement.cascade:
        earlier = [m.name for m in measurements if m.family in BEFORE_ADAPTIVE]
        chosen &= survivors(np.logical_and.reduce([outcomes[name].correct for name in earlier]))
    return np.flatnonzero(chosen)


def with_cascade_masks(outcome: Outcomes, measurement: Measurement, clean: Outcomes) -> Outcomes:
    """The adaptive outcomes with their masks; an example not attacked holds its clean outcome."""
    attacked = np.zeros(measurement.n, dtype=bool)
    attacked[measurement.examples] = True
    correct = np.where(attacked[None, :], outcome.correct, clean.correct)
    return Outcomes(correct, outcome.queries, subsample=measurement.subsample.copy(), attacked=attacked)
