"""Attack cost against its floor: one batched forward + backward w.r.t. the input on the same batch.

A gradient attack cannot be cheaper per step than that floor; the ratio shows what an
implementation wastes (weight gradients, copies, host-device traffic). Measurements are
interleaved (floor, then each attack, repeated) and the median is reported, because these machines
are shared and noisy. This is a benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.attacks.gradient import AttackBatch, run_white_box
from benchmark.runtime.kernel_tuning import (
    KernelTuning,
    apply_memory_format,
    cudnn_autotune_context,
)
from benchmark.spec import DatasetSpec

PERF_SCHEMA = "threatbench.perf/1"
# The speed goals (time per gradient step, per query, per smoothed predict, over its floor). They are
# set for an H100-class GPU: elsewhere the ratios are recorded for comparison, not judged.
GOALS = (("pgd", 1.1), ("nattack", 1.2), ("smoothed_predict", 1.2))
GOAL_DEVICE = "an H100-class GPU"


@dataclass(frozen=True)
class PerfRow:
    attack: str
    gradient_steps: int
    seconds_per_step: float
    ratio_to_floor: float
    images_per_second: float


def gradient_steps(name: str, dataset: DatasetSpec) -> int:
    params = dataset.attacks[name]
    steps = params.steps or 1
    return steps * (params.draws or 1)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(function: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    started = time.perf_counter()
    function()
    _synchronize(device)
    return time.perf_counter() - started


def floor_step(defense, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The floor: one forward and one backward pass w.r.t. the input, nothing else."""
    x_var = x.detach().requires_grad_(True)
    loss = F.cross_entropy(defense(x_var), y, reduction="sum")
    return torch.autograd.grad(loss, x_var)[0]


def measure_attacks(defense, dataset: DatasetSpec, x: torch.Tensor, y: torch.Tensor,
                    attacks: list[str], *, repeats: int = 5, seed: int = 0) -> tuple[float, list[PerfRow]]:
    """Median seconds per floor step, and per attack its seconds per gradient step and ratio.

    Each attack is compared with a loop of as many floor steps as it takes gradients, timed right
    beside it in every repeat, so that loop length and machine state are alike on both sides.
    """
    device = x.device
    batch = AttackBatch(x=x, y=y, indices=torch.arange(x.shape[0]))
    for _ in range(2):   # warm-up: allocator, kernels, thread pools
        floor_step(defense, x, y)
    floor_times = {name: [] for name in attacks}
    attack_times = {name: [] for name in attacks}
    for _ in range(repeats):
        for name in attacks:
            steps = gradient_steps(name, dataset)
            params = dataset.attacks[name]

            def floor_loop(steps=steps):
                for _ in range(steps):
                    floor_step(defense, x, y)

            floor_times[name].append(_time(floor_loop, device) / steps)
            seconds = _time(lambda n=name, p=params: run_white_box(n, defense, batch, p, dataset.eps, seed),
                            device)
            attack_times[name].append(seconds / steps)
    rows = []
    for name in attacks:
        per_step = statistics.median(attack_times[name])
        floor = statistics.median(floor_times[name])
        total = per_step * gradient_steps(name, dataset)
        rows.append(PerfRow(name, gradient_steps(name, dataset), per_step, per_step / floor,
                            x.shape[0] / total))
    overall_floor = statistics.median([t for times in floor_times.values() for t in times])
    return overall_floor, rows


@dataclass(frozen=True)
class NAttackPerf:
    images: int
    queries: int
    seconds: float
    floor_seconds_per_image: float

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds

    @property
    def floor_images_per_second(self) -> float:
        return 1.0 / self.floor_seconds_per_image

    @property
    def ratio_to_floor(self) -> float:
        """Time per query over the floor's time per image (1.0 = at the floor, 1.2 = 20% slower)."""
        return self.floor_images_per_second / self.queries_per_second


def measure_nattack(defense, dataset: DatasetSpec, x: torch.Tensor, y: torch.Tensor, *,
                    iterations: int = 10, repeats: int = 3, seed: int = 0) -> NAttackPerf:
    """NAttack's queries per second against scoring as many images without the search.

    The floor is scoring images * population inputs as NAttack batches them
    (`population_log_scores`): what one NAttack iteration must at least cost.
    """
    from benchmark.attacks.nattack import nattack, population_log_scores

    device = x.device
    population = dataset.nattack.population
    floor_input = torch.rand((x.shape[0], population, *x.shape[1:]), device=device)

    def floor():
        return population_log_scores(defense, floor_input, draws=1)

    floor()   # warm-up
    floor_times, attack_times, queries = [], [], 0
    indices = torch.arange(x.shape[0])
    for _ in range(repeats):
        floor_times.append(_time(floor, device))
        started = time.perf_counter()
        result = nattack(defense, x, y, indices, eps=dataset.eps, params=dataset.nattack, seed=seed,
                         max_iterations=iterations)
        _synchronize(device)
        attack_times.append(time.perf_counter() - started)
        queries = int(result.queries.sum())
    seconds = statistics.median(attack_times)
    return NAttackPerf(x.shape[0], queries, seconds, statistics.median(floor_times) / (x.shape[0] * population))


@dataclass(frozen=True)
class ScoreChunkPerf:
    images: int
    chunk: int          # 0: all images in one forward pass
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


SCORE_CHUNKS = (0, 30, 60, 100, 300)   # 60: what the judge uses on a CPU (nattack.CPU_SCORE_CHUNK)


def measure_score_chunks(defense, images: int, input_shape: tuple[int, ...], device: torch.device, *,
                         chunks: tuple[int, ...] = SCORE_CHUNKS, repeats: int = 3) -> list[ScoreChunkPerf]:
    """Forward passes without gradient over NAttack populations of `images` inputs in all, in one pass
    and in chunks (interleaved, median): why a CPU scores them in chunks
    (`benchmark.attacks.nattack.population_log_scores`)."""
    inputs = torch.rand((images, *input_shape), device=device)

    @torch.no_grad()
    def run(chunk: int) -> None:
        for part in ([inputs] if chunk == 0 else inputs.split(chunk)):
            defense.forward(part)

    for chunk in chunks:   # warm-up
        run(chunk)
    times: dict[int, list[float]] = {chunk: [] for chunk in chunks}
    for _ in range(repeats):
        for chunk in chunks:
            times[chunk].append(_time(lambda c=chunk: run(c), device))
    return [ScoreChunkPerf(images, chunk, statistics.median(times[chunk])) for chunk in chunks]


@dataclass(frozen=True)
class TransferPerf:
    crafting_seconds: float     # first use: the examples are crafted on the source and cached
    cached_seconds: float       # every later target: read back from the cache
    hits: int
    misses: int


def measure_transfer_cache(source, dataset: DatasetSpec, eval_set, cache_root, *, attack: str = "pgd",
                           seed: int = 0, batch_size: int = 100, device=None) -> TransferPerf:
    """Crafting cost paid once per source: a cold read crafts, a second read hits the cache."""
    from benchmark.attacks.transfer import CraftedExamples, TransferCache

    device = device or torch.device("cpu")
    cache = TransferCache(cache_root)
    timings = []
    for _ in range(2):
        crafted = CraftedExamples(source, attack, eval_set, dataset, seed=seed, spec_sha256="perf",
                                  cache=cache, batch_size=batch_size, device=device)
        started = time.perf_counter()
        crafted.get(0, len(eval_set))
        timings.append(time.perf_counter() - started)
    return TransferPerf(timings[0], timings[1], cache.hits, cache.misses)


@dataclass(frozen=True)
class SmoothingPerf:
    images: int
    samples: int
    seconds: float
    floor_seconds: float

    @property
    def ratio_to_floor(self) -> float:
        return self.seconds / self.floor_seconds


def measure_smoothed_predict(defense, x: torch.Tensor, *, samples: int = 16, sigma: float = 0.06,
                             repeats: int = 5) -> SmoothingPerf:
    """Smoothed `predict` (samples noisy draws and a vote) against one batched forward pass of
    images * samples inputs without gradients: the least that m draws can cost."""
    from benchmark.models.smoothing import SmoothedDefense, SmoothingConfig

    device = x.device
    smoothed = SmoothedDefense(defense.model, defense.num_classes, SmoothingConfig(samples, sigma)).to(device)
    stacked = x.repeat(samples, *([1] * (x.dim() - 1)))

    @torch.no_grad()
    def floor():
        return defense.model(stacked)

    floor(), smoothed.predict(x)   # warm-up
    floor_times, predict_times = [], []
    for _ in range(repeats):
        floor_times.append(_time(floor, device))
        predict_times.append(_time(lambda: smoothed.predict(x), device))
    return SmoothingPerf(x.shape[0], samples, statistics.median(predict_times), statistics.median(floor_times))


SMOOTHED_SCORE_CHUNKS = (0, 30, 60, 120, 240)   # 60: SmoothedDefense's default cpu_chunk


def measure_smoothed_score_chunks(defense, images: int, input_shape: tuple[int, ...], device: torch.device, *,
                                  samples: int = 16, sigma: float = 0.06,
                                  chunks: tuple[int, ...] = SMOOTHED_SCORE_CHUNKS,
                                  repeats: int = 3) -> list[ScoreChunkPerf]:
    """NAttack's scoring (`log_scores`) of a smoothed, weight-noise (PNI-W) copy of the model over
    `images` inputs: one grouped pass per block (chunk 0) against one draw per pass in chunks of rows
    that share it (interleaved, median). Why a CPU scores smoothed entries in chunks."""
    from benchmark.models.noise_injection import inject_noise
    from benchmark.models.smoothing import SmoothedDefense, SmoothingConfig

    noisy = inject_noise(copy.deepcopy(defense.model), "pni").to(device).eval()
    config = SmoothingConfig(samples, sigma, "soft")
    variants = {chunk: SmoothedDefense(noisy, defense.num_classes, config, cpu_chunk=chunk or None)
                for chunk in chunks}
    inputs = torch.rand((images, *input_shape), device=device)
    for variant in variants.values():   # warm-up
        variant.log_scores(inputs)
    times: dict[int, list[float]] = {chunk: [] for chunk in chunks}
    for _ in range(repeats):
        for chunk, variant in variants.items():
            times[chunk].append(_time(lambda v=variant: v.log_scores(inputs), device))
    return [ScoreChunkPerf(images, chunk, statistics.median(times[chunk])) for chunk in chunks]


@dataclass(frozen=True)
class TuningPerf:
    tuning: KernelTuning
    floor_seconds: float

    def speedup_over(self, baseline: TuningPerf) -> float:
        return baseline.floor_seconds / self.floor_seconds


def kernel_tunings(device: torch.device) -> list[KernelTuning]:
    """Every combination of kernel options this device can run, the plain one first."""
    autotune = [False, True] if device.type == "cuda" else [False]
    return [KernelTuning(memory_format, on) for memory_format in ("contiguous", "channels_last")
            for on in autotune]


def measure_kernel_tunings(defense, x: torch.Tensor, y: torch.Tensor, *, steps: int = 10,
                           repeats: int = 5) -> list[TuningPerf]:
    """The forward+backward floor under each kernel option (interleaved, median): where they help."""
    device = x.device
    tunings = kernel_tunings(device)
    variants = [apply_memory_format(copy.deepcopy(defense), tuning) for tuning in tunings]
    times: list[list[float]] = [[] for _ in tunings]

    def loop(variant):
        for _ in range(steps):
            floor_step(variant, x, y)

    for tuning, variant in zip(tunings, variants, strict=True):   # warm-up; autotuning picks here
        with cudnn_autotune_context(tuning):
            loop(variant)
    for _ in range(repeats):
        for index, (tuning, variant) in enumerate(zip(tunings, variants, strict=True)):
            with cudnn_autotune_context(tuning):
                times[index].append(_time(lambda v=variant: loop(v), device) / steps)
    return [TuningPerf(tuning, statistics.median(t)) for tuning, t in zip(tunings, times, strict=True)]


def goal_verdicts(ratios: dict[str, float], device: torch.device) -> dict:
    """Each goal with its measured ratio; `judged` is whether this device is one the goals are set for."""
    rounded = {name: round(ratios[name], 4) for name, _ in GOALS}   # the verdict matches the number shown
    return {
        "device": GOAL_DEVICE,
        "judged": device.type == "cuda",
        "goals": [{"measurement": name, "ratio": rounded[name], "at_most": target, "met": rounded[name] <= target}
                  for name, target in GOALS],
    }


def perf_report(*, model: dict, device: torch.device, batch_size: int, repeats: int,
                tunings: list[TuningPerf], tuning: KernelTuning, floor_seconds: float, rows: list[PerfRow],
                nattack: NAttackPerf, nattack_iterations: int, smoothing: SmoothingPerf,
                transfer: TransferPerf | None, provenance: dict,
                score_chunks: list[ScoreChunkPerf] | None = None,
                smoothed_score_chunks: list[ScoreChunkPerf] | None = None) -> dict:
    """The measurements of one `threatbench perf` run as a `threatbench.perf/1` document."""
    ratios = {row.attack: row.ratio_to_floor for row in rows}
    ratios.update(nattack=nattack.ratio_to_floor, smoothed_predict=smoothing.ratio_to_floor)
    return {
        "schema": PERF_SCHEMA,
        "model": model,
        "batch_size": batch_size,
        "repeats": repeats,
        "statistic": "median of interleaved repeats",
        "kernel_options": [{"memory_format": t.tuning.memory_format, "cudnn_autotune": t.tuning.cudnn_autotune,
                            "floor_seconds": t.floor_seconds, "speedup": t.speedup_over(tunings[0])}
                           for t in tunings],
        "attack_kernel_options": {"memory_format": tuning.memory_format, "cudnn_autotune": tuning.cudnn_autotune},
        "floor_seconds": floor_seconds,
        "attacks": [{"attack": r.attack, "gradient_steps": r.gradient_steps, "seconds_per_step": r.seconds_per_step,
                     "ratio_to_floor": r.ratio_to_floor, "images_per_second": r.images_per_second} for r in rows],
        "nattack": {"images": nattack.images, "iterations": nattack_iterations, "queries": nattack.queries,
                    "seconds": nattack.seconds, "queries_per_second": nattack.queries_per_second,
                    "floor_images_per_second": nattack.floor_images_per_second,
                    "ratio_to_floor": nattack.ratio_to_floor},
        "score_chunks": None if score_chunks is None else [
            {"images": c.images, "chunk": c.chunk, "seconds": c.seconds, "images_per_second": c.images_per_second}
            for c in score_chunks],
        "smoothed_score_chunks": None if smoothed_score_chunks is None else [
            {"images": c.images, "chunk": c.chunk, "seconds": c.seconds, "queries_per_second": c.images_per_second}
            for c in smoothed_score_chunks],
        "smoothed_predict": {"images": smoothing.images, "samples": smoothing.samples, "seconds": smoothing.seconds,
                             "floor_seconds": smoothing.floor_seconds, "ratio_to_floor": smoothing.ratio_to_floor},
        "transfer_cache": None if transfer is None else {
            "crafting_seconds": transfer.crafting_seconds, "cached_seconds": transfer.cached_seconds,
            "hits": transfer.hits, "misses": transfer.misses},
        "goals": goal_verdicts(ratios, device),
        "provenance": provenance,
    }
