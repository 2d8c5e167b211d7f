"""Run the spec on one defense and produce a Result (and, with `out`, a result record on disk).

An evaluation is a list of measurements: clean accuracy, each white-box attack, each transfer
attack from each held-out source, NAttack, and the eps = 1 PGD diagnostic. Each is computed batch by
batch and checkpointed, so an interrupted evaluation resumes where it stopped: finished measurements
are never recomputed, and the numbers are identical because every random draw depends only on
(seed, measurement, example index or batch start).

Randomized defenses (declared or detected) are attacked with EOT on every gradient, and every
accuracy is the mean over repeated `predict` calls, whose spread is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.attacks.batches import iterate_batches, iterate_example_batches
from benchmark.attacks.gradient import AttackBatch, PassCounter, check_perturbation, run_white_box
from benchmark.attacks.nattack import nattack
from benchmark.attacks.sources import load_held_out_sources, transfer_cache_dir
from benchmark.attacks.transfer import (
    TRANSFER_ATTACKS,
    CraftedExamples,
    TransferCache,
    TransferSource,
    sources_with_ensemble,
)
from benchmark.data import load_evaluation_set
from benchmark.errors import DefenseOutputError, ThreatbenchError
from benchmark.evaluation.cascade import (
    adaptive_subsample,
    cascade_stages,
    estimate_from_outcomes,
    survivors,
)
from benchmark.evaluation.checks import check_defense_is_consistent
from benchmark.evaluation.diagnostics import gradient_masking_flags
from benchmark.evaluation.results import (
    RESULT_SCHEMA,
    EvaluationState,
    Outcomes,
    check_output_path,
    examples_path,
    write_result,
)
from benchmark.evaluation.stats import wilson_interval
from benchmark.models.defense import Defense, probe_randomness
from benchmark.models.smoothing import SmoothedDefense
from benchmark.runtime import provenance
from benchmark.runtime.distributed import (
    SINGLE,
    Shard,
    barrier,
    current_shard,
    device_for_rank,
    max_over_shards,
    min_over_shards,
    sum_over_shards,
)
from benchmark.runtime.kernel_tuning import (
    DEFAULT_TUNING,
    KernelTuning,
    apply_memory_format,
    cudnn_autotune_context,
    resolve_tuning,
)
from benchmark.runtime.memory import fit_batch_size
from benchmark.runtime.precision import check_available, precision_context, require_validated
from benchmark.runtime.randomness import seed_model_noise
from benchmark.spec import FAMILIES, AdaptivePolicy, Budget, DatasetSpec, Spec, load_spec

WHITE_BOX_DETERMINISTIC = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd", "pgd_margin")
WHITE_BOX_RANDOMIZED = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "epgd", "epgd_margin")   # pgd with EOT: epgd
SPEC_V1_ADAPTIVE = AdaptivePolicy()   # NAttack on the first nattack_n examples, no cascade


def white_box_attacks(dataset: DatasetSpec, randomized: bool) -> list[str]:
    """The white-box family for this entry; the margin-loss PGD only where the spec defines it (v2)."""
    names = WHITE_BOX_RANDOMIZED if randomized else WHITE_BOX_DETERMINISTIC
    return [name for name in names if name in dataset.attacks]


@dataclass
class EntryInfo:
    """Who is being judged; goes into the record's `entry` field."""

    name: str
    kind: str = "user"                      # baseline | submission | reference | user
    architecture: str | None = None
    weights: dict[str, Any] | None = None   # {"file", "sha256"}, plus "repo" and "revision" from the Hub
    paper: str | None = None
    recipe: dict[str, Any] | None = None      # {"file": ..., "sha256": ..., "epoch": ...} for baselines
    smoothing: dict[str, Any] | None = None   # {"samples", "sigma", "vote"} for smoothed inference
    normalization: dict[str, list[float]] | None = None   # {"mean", "std"} replacing the architecture's
    submission: dict[str, Any] | None = None  # manifest file + sha256, authors, license, claimed numbers


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


# ---------------------------------------------------------------- batches


GPU_MAX_BATCH = 1024   # the largest batch tried on a GPU; halved until it fits (benchmark.runtime.memory)


def default_batch_size(dataset: DatasetSpec, device: torch.device) -> int:
    pixels = int(np.prod(dataset.input_shape))
    budget = 4_000_000 if device.type == "cuda" else 200_000   # pixels per batch
    return int(max(1, min(1000, budget // pixels)))


def nattack_batch_size(dataset: DatasetSpec, device: torch.device) -> int:
    """Images whose populations share one forward batch."""
    population_pixels = dataset.nattack.population * int(np.prod(dataset.input_shape))
    budget = 200_000_000 if device.type == "cuda" else 8_000_000
    return int(max(1, min(64, budget // population_pixels)))


# ---------------------------------------------------------------- measurements

# Produces the images to classify for a batch, and the queries spent per example (or None).
Adversary = Callable[[AttackBatch, PassCounter], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Measurement:
    name: str
    family: str                # clean | white_box | transfer | adaptive | diagnostic
    n: int                     # outcome columns: the first n examples of the subset
    batch_size: int
    adversary: Adversary
    params: dict[str, Any] = field(default_factory=dict)
    # The adaptive family under spec v2: its subsample (bool [n]) and whether it attacks only the
    # survivors of the families before it; `examples` (the indices it attacks) is set when they are known.
    subsample: np.ndarray | None = None
    cascade: bool = False
    examples: np.ndarray | None = None

    def positions(self) -> np.ndarray:
        """The example indices measured, in order: the first n, or the attacked ones."""
        return np.arange(self.n) if self.examples is None else self.examples


def _clean(batch: AttackBatch, counter: PassCounter):
    return batch.x, None


def white_box_measurement(attack: str, dataset: DatasetSpec, defense: Defense, *, eps: float, seed: int,
                          draws: int | None, n: int, batch_size: int, name: str | None = None,
                          family: str = "white_box") -> Measurement:
    params = dataset.attacks[attack]
    if draws is not None:
        params = dataclasses.replace(params, draws=draws)
    if eps != dataset.eps and params.step_size is not None:   # the eps = 1 diagnostic scales its step
        params = dataclasses.replace(params, step_size=2.5 * eps / params.steps)

    def adversary(batch, counter):
        return run_white_box(attack, defense, batch, params, eps, seed, counter), None

    recorded = {**params.as_dict(), **({"eps": eps} if eps != dataset.eps else {})}
    return Measurement(name or attack, family, n, batch_size, adversary, recorded)


def transfer_measurement(source: TransferSource, attack: str, crafted: CraftedExamples, *, eps: float,
                         n: int, batch_size: int, dataset: DatasetSpec) -> Measurement:
    def adversary(batch, counter):
        x_adv = crafted.take(batch.indices).to(batch.x.device)
        check_perturbation(batch.x, x_adv, eps, f"transfer from {source.name}")
        return x_adv, None

    params = {**dataset.attacks[attack].as_dict(), "source": source.name, "source_sha256": source.sha256}
    return Measurement(f"transfer/{source.name}/{attack}", "transfer", n, batch_size, adversary, params)


def judge_criterion(defense: Defense, repeats: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The judge's own test of an image, for decisions inside an attack: still correct in at least
    one of `repeats` predictions (the record then counts it per repeat)."""
    def still_correct(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        correct = defense.predict(images) == labels
        for _ in range(repeats - 1):
            correct |= defense.predict(images) == labels
        return correct

    return still_correct


def nattack_measurement(dataset: DatasetSpec, budget: Budget, defense: Defense, *, seed: int,
                        batch_size: int, repeats: int = 1, randomized: bool = False,
                        adaptive: AdaptivePolicy = SPEC_V1_ADAPTIVE, n: int | None = None,
                        subsample: np.ndarray | None = None) -> Measurement:
    """NAttack on the first `nattack_n` examples (spec v1), or on a seeded uniform subsample of the n
    examples, attacking only the survivors of the earlier families when `adaptive.cascade` (v2).
    `subsample` (bool [n]) replaces the seeded one: the regression replay passes the record's."""
    iterations = budget.nattack_max_iterations or dataset.nattack.max_iterations
    score_draws = dataset.nattack.score_draws if randomized else 1

    def adversary(batch, counter):
        result = nattack(defense, batch.x, batch.y, batch.indices, eps=dataset.eps,
                         params=dataset.nattack, seed=seed, max_iterations=iterations,
                         still_correct=judge_criterion(defense, repeats), criterion_queries=repeats,
                         score_draws=score_draws)
        counter.add(int(result.queries.sum()), backward=False)
        return result.x_adv, result.queries

    params = {**dataclasses.asdict(dataset.nattack), "max_iterations": iterations}
    if not randomized:
        params.pop("score_draws")
    params["search_shape"] = list(params["search_shape"])
    if adaptive.subsample == "first":
        return Measurement("nattack", "adaptive", budget.nattack_n, batch_size, adversary, params)
    n = budget.n if n is None else n
    if subsample is None:
        subsample = adaptive_subsample(n, budget.nattack_n, seed)
    params.update(subsample=adaptive.subsample, subsample_size=int(subsample.sum()), cascade=adaptive.cascade)
    return Measurement("nattack", "adaptive", n, batch_size, adversary, params, subsample=subsample,
                       cascade=adaptive.cascade)


# ---------------------------------------------------------------- the evaluation loop


class _Evaluation:
    """The moving parts of one evaluation; `evaluate()` is the public entry point."""

    def __init__(self, defense, eval_set, state, *, seed, device, repeats, progress, checkpoint_seconds,
                 shard: Shard = SINGLE):
        self.defense, self.eval_set, self.state = defense, eval_set, state
        self.seed, self.device, self.repeats = seed, device, repeats
        self.progress, self.checkpoint_seconds = progress, checkpoint_seconds
        self.shard = shard

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


# ---------------------------------------------------------------- numbers


def summarize(correct: np.ndarray, confidence: float) -> dict[str, Any]:
    """Accuracy of bool [repeats, n] outcomes: the mean over repeats, with a Wilson interval.

    With repeated (randomized) predictions, the interval is computed on the mean number of correct
    examples, and the spread across repeats is recorded beside it.
    """
    repeats, n = correct.shape
    per_repeat = correct.mean(axis=1)
    accuracy = float(per_repeat.mean())
    mean_correct = float(correct.sum(axis=1).mean())
    low, high = wilson_interval(int(round(mean_correct)), n, confidence)
    summary = {"accuracy": accuracy, "correct": int(round(mean_correct)), "n": int(n),
               "interval": [low, high]}
    if repeats > 1:
        summary["repeats"] = int(repeats)
        summary["spread"] = {"std": float(per_repeat.std()), "min": float(per_repeat.min()),
                             "max": float(per_repeat.max())}
    return summary


def worst_case(outcomes: dict[str, Outcomes], names: list[str], n: int, confidence: float,
               definition: str) -> dict[str, Any]:
    """Per example (and per repeat): correct on the clean input and under every listed measurement."""
    stacked = [outcomes["clean"].correct[:, :n], *(outcomes[m].correct[:, :n] for m in names)]
    return {**summarize(np.logical_and.reduce(stacked), confidence), "definition": definition,
            "measurements": names}


def _family_bits(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], family: str) -> np.ndarray:
    """bool [repeats, n]: correct under every attack of one family."""
    return np.logical_and.reduce([outcomes[name].correct for name in by_family[family]])


def _prior_bits(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]]) -> np.ndarray:
    """bool [repeats, n]: correct on the clean input and under every white-box and transfer attack."""
    names = ["clean", *by_family.get("white_box", []), *by_family.get("transfer", [])]
    return np.logical_and.reduce([outcomes[name].correct for name in names])


def adaptive_summary(outcome: Outcomes, confidence: float) -> dict[str, Any]:
    """NAttack's accuracy on the examples it attacked (none: the cascade left it no survivor)."""
    if not outcome.attacked.any():
        return {"accuracy": None, "correct": 0, "n": 0, "interval": None}
    return summarize(outcome.correct[:, outcome.attacked], confidence)


def adaptive_worst_case(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: Outcomes,
                        confidence: float, *, cascaded: bool) -> dict[str, Any]:
    """The adaptive family's worst case on its subsample. With the cascade it is cumulative (NAttack
    attacked only the survivors of the other families); without, NAttack's own."""
    names = by_family["adaptive"]
    bits = [outcomes[name].correct for name in names]
    if cascaded:
        bits.append(_prior_bits(outcomes, by_family))
    else:
        bits.append(outcomes["clean"].correct)
    definition = ("correct on the clean input and under every attack of every family, on the adaptive "
                  "subsample (the cascade: NAttack attacked only the survivors of the others)" if cascaded
                  else "correct on the clean input and under every adaptive attack, on the adaptive subsample")
    return {**summarize(np.logical_and.reduce(bits)[:, staged.subsample], confidence),
            "definition": definition, "measurements": names}


def estimated_worst_case(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: Outcomes,
                         confidence: float) -> dict[str, Any]:
    """The ranking key: the per-example worst case over all families, estimated in two phases
    (benchmark.evaluation.cascade) when the adaptive subsample is smaller than the evaluation set."""
    prior = _prior_bits(outcomes, by_family)
    final = np.logical_and.reduce([prior, *(outcomes[name].correct for name in by_family["adaptive"])])
    estimate = estimate_from_outcomes(prior, final, staged.subsample, confidence)
    subsample = staged.subsample
    key = {"accuracy": estimate.accuracy, "interval": list(estimate.interval), "n": estimate.n,
           "subsample": estimate.subsample, "method": estimate.method}
    if estimate.method == "direct":
        key.update({k: v for k, v in summarize(final, confidence).items() if k not in key})
        definition = ("correct on the clean input and under every attack of every family, per example "
                      "(NAttack on every example that survived the others)")
    else:
        definition = ("p * q: p, the worst case over clean, white-box and transfer on all n examples; q, the "
                      "fraction of the adaptive subsample's survivors that NAttack left correct; interval: "
                      "the product of both Wilson bounds at confidence 1 - alpha/2 (docs/ranking.md)")
    key.update(definition=definition, estimate=estimate.as_dict(),
               measurements=[name for family in FAMILIES for name in by_family[family]])
    # The same examples per family, so that the gaps between families compare like with like.
    clean = outcomes["clean"].correct
    key["families_on_subset"] = {
        **{family: float((clean & _family_bits(outcomes, by_family, family))[:, subsample].mean())
           for family in ("white_box", "transfer")},
        "all": float(final[:, subsample].mean()),
    }
    return key


def _queries_summary(queries: np.ndarray) -> dict[str, Any]:
    return {"median": float(np.median(queries)), "mean": float(queries.mean()),
            "max": int(queries.max()), "total": int(queries.sum())}


# ---------------------------------------------------------------- public API


def configuration_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def state_path_for(out: Path | None, shard: Shard = SINGLE, checkpoint_dir: Path | None = None) -> Path | None:
    """The checkpoint: hidden beside the record, or `<checkpoint_dir>/<record stem>.state.json` (a
    directory meant to be committed, docs/long-evaluations.md); one per process when sharded."""
    if out is None:
        return None
    part = f".shard{shard.rank}of{shard.world_size}" if shard.sharded else ""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir) / f"{out.stem}{part}.state.json"
    return out.with_name(f".{out.stem}{part}.state.json")


def check_defense_output(defense: Defense, x: torch.Tensor, num_classes: int) -> None:
    """The defense's predict and scores have the interface's shapes and meaning, on a real batch."""
    if defense.num_classes != num_classes:
        raise DefenseOutputError(
            f"{defense.name}: built for {defense.num_classes} classes, the dataset has {num_classes}"
        )
    predictions = defense.predict(x)   # raises on a wrong shape or non-finite logits
    if predictions.shape != (x.shape[0],):
        raise DefenseOutputError(f"{defense.name}: predict returned shape {tuple(predictions.shape)}, "
                                 f"expected ({x.shape[0]},) labels")
    scores = defense.scores(x)
    if scores.shape != (x.shape[0], num_classes):
        raise DefenseOutputError(f"{defense.name}: scores returned shape {tuple(scores.shape)}, "
                                 f"expected ({x.shape[0]}, {num_classes}) probabilities")
    totals = scores.sum(dim=1)
    if not torch.isfinite(scores).all() or (scores < 0).any() or (totals - 1).abs().max() > 1e-4:
        raise DefenseOutputError(
            f"{defense.name}: scores must be probabilities (non-negative, each row summing to 1), but "
            f"row sums range from {float(totals.min()):.4g} to {float(totals.max()):.4g}; return a "
            "softmax or a vote distribution, which is what the defense reports"
        )
    log_scores = defense.log_scores(x)
    if log_scores.shape != (x.shape[0], num_classes) or not torch.isfinite(log_scores).all():
        raise DefenseOutputError(
            f"{defense.name}: log_scores returned shape {tuple(log_scores.shape)} or non-finite values; "
            f"expected finite ({x.shape[0]}, {num_classes}) log-probabilities (log-softmax of the logits)"
        )


def usable_sources(sources: list[TransferSource], entry: EntryInfo, num_classes: int) -> list[TransferSource]:
    """The held-out sources minus the target itself (a model is never its own source)."""
    for source in sources:
        if source.defense.num_classes != num_classes:
            raise ThreatbenchError(
                f"held-out source {source.name} has {source.defense.num_classes} classes, the target "
                f"has {num_classes}; the spec's sources must match the dataset"
            )
    own = (entry.weights or {}).get("sha256")
    return [s for s in sources if s.sha256 != own]


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

    `sources` are the held-out transfer sources; by default the spec's own, loaded and
    hash-checked. `families` limits what is run (the others are recorded as not run).
    With `out`, progress is checkpointed beside it and a rerun of the same call resumes.
    `precision` other than float32 must have passed `threatbench precision-check` on this device
    (benchmark.runtime.precision); only that check itself sets `validated_precision_only=False`.
    `memory_format` and `cudnn_autotune` are the kernel options of benchmark.runtime.kernel_tuning.
    `cascade` overrides the spec's (False: NAttack attacks its whole subsample, a diagnostic);
    `adaptive_examples` (bool [n]) replaces the seeded adaptive subsample (the regression replay).
    `checkpoint_dir` holds the checkpoint instead of a hidden file beside `out`, so that it can be
    committed and resumed on another machine (docs/long-evaluations.md).
    `consistency_check=False` skips benchmark.evaluation.checks, only for a replay of an entry already checked.
    `examples` (sorted indices) limits clean, white-box and transfer to those examples of the n (the
    regression replay's random sample); the other columns of their outcomes stay 0.
    """
    started = time.time()
    spec = spec or load_spec()
    dataset_spec = spec.dataset(dataset)
    budget_spec = dataset_spec.budget(budget).for_entry(smoothed=isinstance(defense, SmoothedDefense))
    seed = spec.seed if seed is None else int(seed)
    device = device_for_rank(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    shard = current_shard(device)
    precision_check = (require_validated(precision, device) if validated_precision_only
                       else check_available(precision, device))
    out = check_output_path(out) if out is not None else None
    requested_batch_size = batch_size
    batch_size = batch_size or default_batch_size(dataset_spec, device)
    entry = entry or EntryInfo(name=defense.name)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ThreatbenchError(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")

    preprocessing = dataset_spec.preprocessing.as_dict() if dataset_spec.preprocessing else None
    eval_set = load_evaluation_set(dataset, budget_spec.n, data_dir, imagenet_preprocessing=preprocessing)
    defense = defense.to(device)
    tuning = resolve_tuning(defense, device, memory_format=memory_format, cudnn_autotune=cudnn_autotune)
    apply_memory_format(defense, tuning)
    probe = next(iterate_batches(eval_set, 0, min(batch_size, 64), device))
    check_defense_output(defense, probe.x, dataset_spec.num_classes)
    detected = probe_randomness(defense, probe.x)
    randomized = defense.randomized or detected
    # Before any attack: a defense whose answers depend on grad mode, batch or history is refused.
    if consistency_check:
        check_defense_is_consistent(defense, probe.x, eps=dataset_spec.eps, seed=seed, randomized=randomized)
    repeats = spec.randomized.prediction_repeats if randomized else 1
    draws = dataset_spec.attacks["epgd"].draws if randomized else None
    fixed_grid = randomized and spec.randomized.batch_size is not None
    if fixed_grid:
        if requested_batch_size not in (None, spec.randomized.batch_size):
            tqdm.write(f"{defense.name}: randomized entries run in the spec's fixed batches of "
                       f"{spec.randomized.batch_size} (their noise is seeded per batch); --batch-size ignored")
        batch_size = requested_batch_size = spec.randomized.batch_size
    elif requested_batch_size is None and device.type == "cuda":   # an explicit --batch-size is kept as is
        batch_size = min_over_shards(fit_batch_size(defense, probe.x, min(len(eval_set), GPU_MAX_BATCH),
                                                    say=tqdm.write), shard, device)

    family_status: dict[str, dict[str, Any]] = {}
    measurements = [Measurement("clean", "clean", budget_spec.n, batch_size, _clean)]
    if "white_box" in families:
        names = white_box_attacks(dataset_spec, randomized)
        measurements += [white_box_measurement(a, dataset_spec, defense, eps=dataset_spec.eps, seed=seed,
                                               draws=draws, n=budget_spec.n, batch_size=batch_size)
                         for a in names]
        family_status["white_box"] = {"status": "run"}
    transfer_cache = None
    if "transfer" in families:
        transfer_cache, status, transfer = _transfer_measurements(
            spec, dataset_spec, budget_spec, eval_set, entry, sources, seed=seed, device=device,
            batch_size=batch_size, precision=precision)
        measurements += transfer
        family_status["transfer"] = status
    if "adaptive" in families:
        nattack_batch = nattack_batch_size(dataset_spec, device)
        if fixed_grid:
            nattack_batch = spec.randomized.nattack_batch_size
        elif requested_batch_size:   # an explicit batch size caps every batch, populations included
            nattack_batch = min(nattack_batch, requested_batch_size)
        policy = spec.adaptive if cascade is None else dataclasses.replace(spec.adaptive, cascade=cascade)
        measurements.append(nattack_measurement(dataset_spec, budget_spec, defense, seed=seed,
                                                batch_size=nattack_batch, repeats=repeats,
                                                randomized=randomized, adaptive=policy,
                                                subsample=adaptive_examples))
        family_status["adaptive"] = {"status": "run"}
    if "white_box" in families:
        unbounded = spec.diagnostics
        measurements.append(white_box_measurement(
            "epgd" if randomized else "pgd", dataset_spec, defense, eps=unbounded.unbounded_pgd_eps,
            seed=seed, draws=draws, n=min(unbounded.unbounded_pgd_examples, budget_spec.n),
            batch_size=batch_size, name="pgd_unbounded", family="diagnostic"))
    for family in FAMILIES:
        family_status.setdefault(family, {"status": "not_run", "reason": "not requested (families=...)"})

    key = configuration_key(spec=spec.sha256, dataset=dataset, budget=budget, n=budget_spec.n,
                            subset=eval_set.sha256, seed=seed, batch_size=batch_size,
                            device=device.type, entry=entry.__dict__,
                            **({"precision": precision} if precision != "float32" else {}),
                            **tuning.as_provenance(),
                            measurements=[(m.name, m.n, m.params) for m in measurements],
                            **({"examples": [int(i) for i in examples]} if examples is not None else {}),
                            **({"shard": [shard.rank, shard.world_size]} if shard.sharded else {}))
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    state = EvaluationState.open(state_path_for(out, shard, checkpoint_dir), key)
    run = _Evaluation(defense, eval_set, state, seed=seed, device=device, repeats=repeats,
                      progress=progress, checkpoint_seconds=checkpoint_seconds, shard=shard)
    if examples is not None:
        for m in measurements:
            if m.family in ("clean", "white_box", "transfer"):
                m.examples = np.asarray(examples)
    outcomes, costs = {}, {}
    with precision_context(precision, device), cudnn_autotune_context(tuning):
        for m in measurements:   # the same order in every process: gather is collective
            if m.subsample is not None:
                m.examples = adaptive_targets(m, outcomes, measurements)
            outcomes[m.name], costs[m.name] = run.gather(*run.measure(m))
            if m.subsample is not None:
                outcomes[m.name] = with_cascade_masks(outcomes[m.name], m, outcomes["clean"])
    for outcome in outcomes.values():
        if outcome.queries is not None and not outcome.queries.any():
            outcome.queries = None

    record = build_record(
        spec=spec, dataset_spec=dataset_spec, budget=budget_spec, seed=seed, eval_set=eval_set,
        entry=entry, declared=defense.randomized, detected=detected, measurements=measurements,
        outcomes=outcomes, costs=costs, family_status=family_status, device=device,
        batch_size=batch_size, total_seconds=max_over_shards(time.time() - started, shard, device),
        transfer_cache=transfer_cache, examples_file=examples_path(out).name if out is not None else None,
        processes=shard.world_size, precision=precision, tuning=tuning,
    )
    if precision_check is not None:
        record["provenance"]["precision_check"] = precision_check
    if out is not None and shard.is_main:
        write_result(out, record, outcomes)
    barrier(shard)   # the record is on disk before any process drops its checkpoint
    state.remove()
    return Result(record=record, outcomes=outcomes)


def adaptive_targets(measurement: Measurement, outcomes: dict[str, Outcomes],
                     measurements: list[Measurement]) -> np.ndarray:
    """The examples the adaptive family attacks: its subsample, and with the cascade only the
    examples correct in at least one repeat under clean and every white-box and transfer attack."""
    chosen = measurement.subsample.copy()
    if measurement.cascade:
        earlier = [m.name for m in measurements if m.family in ("clean", "white_box", "transfer")]
        chosen &= survivors(np.logical_and.reduce([outcomes[name].correct for name in earlier]))
    return np.flatnonzero(chosen)


def with_cascade_masks(outcome: Outcomes, measurement: Measurement, clean: Outcomes) -> Outcomes:
    """The adaptive outcomes with their masks; an example not attacked holds its clean outcome."""
    attacked = np.zeros(measurement.n, dtype=bool)
    attacked[measurement.examples] = True
    correct = np.where(attacked[None, :], outcome.correct, clean.correct)
    return Outcomes(correct, outcome.queries, subsample=measurement.subsample.copy(), attacked=attacked)


def _transfer_measurements(spec, dataset_spec, budget_spec, eval_set, entry, sources, *, seed, device,
                           batch_size, precision="float32"):
    if sources is None:
        sources, reason = load_held_out_sources(dataset_spec, device=device)
        if not sources:
            return None, {"status": "not_run", "reason": reason}, []
    usable = usable_sources(sources, entry, dataset_spec.num_classes)
    if not usable:
        return None, {"status": "not_run",
                      "reason": "every held-out source is the evaluated model itself"}, []
    cache = TransferCache(transfer_cache_dir())
    measurements = []
    for source in sources_with_ensemble(usable):
        for attack in TRANSFER_ATTACKS:
            # Examples crafted under another precision are cached apart from float32 ones.
            crafted = CraftedExamples(source, attack, eval_set, dataset_spec, seed=seed,
                                      spec_sha256=spec.sha256 + ("" if precision == "float32" else f"+{precision}"),
                                      cache=cache, batch_size=batch_size, device=device)
            measurements.append(transfer_measurement(source, attack, crafted, eps=dataset_spec.eps,
                                                     n=budget_spec.n, batch_size=batch_size,
                                                     dataset=dataset_spec))
    status = {"status": "run", "sources": [{"name": s.name, "sha256": s.sha256} for s in usable]}
    excluded = [s.name for s in sources if s not in usable]
    if excluded:
        status["excluded_sources"] = {"names": excluded, "reason": "a model is never its own source"}
    return cache, status, measurements


def measurement_numbers(outcome: Outcomes, confidence: float) -> dict[str, Any]:
    """What a record states about one measurement that its per-example bits determine."""
    numbers = adaptive_summary(outcome, confidence) if outcome.attacked is not None \
        else summarize(outcome.correct, confidence)
    queries = outcome.queries if outcome.attacked is None or outcome.queries is None \
        else outcome.queries[outcome.attacked]
    if queries is not None and queries.size:
        numbers["queries"] = _queries_summary(queries)
    return numbers


def worst_cases(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: str | None,
                cascaded: bool, nattack_n: int, confidence: float, *, complete: bool) -> dict[str, Any]:
    """The record's `worst_case`: per family, and over all families when every family ran.
    `staged` names the adaptive measurement of spec v2 (a subsample); None under spec v1."""
    n = outcomes["clean"].n
    worst: dict[str, Any] = {family: None for family in FAMILIES}
    for family, names in by_family.items():
        if family == "adaptive" and staged is not None:
            worst[family] = adaptive_worst_case(outcomes, by_family, outcomes[staged], confidence,
                                                cascaded=cascaded)
            continue
        size = nattack_n if family == "adaptive" else n
        worst[family] = worst_case(outcomes, names, size, confidence,
                                   f"correct on the clean input and under every {family} attack")
    worst["all"] = None
    if not complete:
        return worst
    if staged is not None:
        worst["all"] = estimated_worst_case(outcomes, by_family, outcomes[staged], confidence)
        return worst
    names = [name for family in FAMILIES for name in by_family[family]]
    worst["all"] = worst_case(outcomes, names, nattack_n, confidence,
                              "correct on the clean input and under every attack of every family, "
                              f"on the first {nattack_n} examples (where NAttack ran)")
    # The same examples per family, so that the gaps between families compare like with like.
    worst["all"]["families_on_subset"] = {
        family: summarize(np.logical_and.reduce(
            [outcomes["clean"].correct[:, :nattack_n],
             *(outcomes[m].correct[:, :nattack_n] for m in by_family[family])]), confidence)["accuracy"]
        for family in FAMILIES
    }
    return worst


def record_cascade(outcomes: dict[str, Outcomes], by_family: dict[str, list[str]], staged: str,
                   ) -> list[dict[str, Any]]:
    """The record's `cascade`: what each family attacked and broke beyond the earlier ones."""
    outcome = outcomes[staged]
    return cascade_stages(
        outcomes["clean"].correct,
        [(family, _family_bits(outcomes, by_family, family)) for family in ("white_box", "transfer")
         if by_family.get(family)],
        (_family_bits(outcomes, by_family, "adaptive"), outcome.subsample, outcome.attacked))


def nattack_cascade(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """NAttack's line of the cascade, kept beside its accuracy: what it attacked and broke."""
    stage = stages[-1]
    return {"subsample": stage["subsample"], "survivors": stage["survivors_in_subsample"],
            "attacked": stage["attacked"], "broken": stage["broken"]}


def build_record(*, spec: Spec, dataset_spec: DatasetSpec, budget: Budget, seed: int, eval_set,
                 entry: EntryInfo, declared: bool, detected: bool, measurements: list[Measurement],
                 outcomes: dict[str, Outcomes], costs: dict[str, dict[str, Any]],
                 family_status: dict[str, dict[str, Any]], device: torch.device, batch_size: int,
                 total_seconds: float, transfer_cache: TransferCache | None,
                 examples_file: str | None, processes: int = 1,
                 precision: str = "float32", tuning: KernelTuning = DEFAULT_TUNING) -> dict[str, Any]:
    confidence = spec.confidence
    by_family: dict[str, list[str]] = {}
    attacks, diagnostics = {}, {}
    for m in measurements:
        if m.family == "clean":
            continue
        measured_costs = dict(costs[m.name])
        checked, missing = measured_costs.pop("gradient_checked", 0), measured_costs.pop("gradient_missing", 0)
        summary = {"family": m.family, "params": m.params, **measurement_numbers(outcomes[m.name], confidence)}
        summary.update(measured_costs)
        if checked:   # the margin-loss PGD watches for examples without any input gradient
            summary["gradient"] = {"missing": int(missing), "n": int(checked)}
        if m.family == "diagnostic":
            diagnostics[m.name] = summary
        else:
            attacks[m.name] = summary
            by_family.setdefault(m.family, []).append(m.name)
    for family, names in by_family.items():
        family_status[family]["measurements"] = names

    n, nattack_n = len(eval_set), budget.nattack_n
    staged_measurement = next((m for m in measurements if m.subsample is not None), None)
    staged = None if staged_measurement is None else staged_measurement.name
    cascaded = staged_measurement is not None and staged_measurement.cascade
    complete = all(family_status[f]["status"] == "run" for f in FAMILIES)
    worst = worst_cases(outcomes, by_family, staged, cascaded, nattack_n, confidence, complete=complete)
    record = {
        "schema": RESULT_SCHEMA,
        "entry": {**entry.__dict__, "randomized": declared},
        "dataset": dataset_spec.name,
        "spec": {"version": spec.version, "sha256": spec.sha256},
        "threat_model": {"norm": spec.norm, "eps": dataset_spec.eps},
        "budget": budget.name,
        "n": n,
        "nattack_n": nattack_n,
        "subset_sha256": eval_set.sha256,
        "seed": seed,
        "randomness": {"declared": declared, "detected": detected,
                       "attacked_as_randomized": declared or detected,
                       "prediction_repeats": outcomes["clean"].repeats},
        "clean": {**summarize(outcomes["clean"].correct, confidence), **costs["clean"]},
        "attacks": attacks,
        "families": family_status,
        "worst_case": worst,
        "diagnostics": diagnostics,
        "examples_file": examples_file,
        "provenance": provenance.collect(device, batch_size=batch_size, total_seconds=total_seconds,
                                         processes=processes, precision=precision,
                                         tuning=tuning.as_provenance()),
    }
    if transfer_cache is not None:
        record["provenance"]["transfer_cache"] = {
            "chunk_hits": transfer_cache.hits, "chunk_misses": transfer_cache.misses,
            "crafting_seconds": round(transfer_cache.crafted_seconds, 3)}
    if staged is not None:
        record["cascade"] = record_cascade(outcomes, by_family, staged)
        attacks[staged]["cascade"] = nattack_cascade(record["cascade"])
    record["costs"] = cost_summary(record)
    record["flags"] = gradient_masking_flags(record, outcomes)
    return record


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
