"""Smoothing sweep: accuracy of smoothed inference as the number of draws m grows (Nemcovsky §5).

PGD and EPGD examples are crafted once per batch on the smoothed model's differentiable path, which
is one draw of the base model (input noise sigma plus its own weight noise) and does not depend on m;
each m then classifies the same clean and adversarial images with its m-draw vote. So the curve
isolates the effect of m, as Nemcovsky et al. do, and EPGD is the attack that follows the noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.attacks.gradient import AttackBatch, PassCounter, run_white_box
from benchmark.batches import iterate_batches
from benchmark.data import load_evaluation_set
from benchmark.provenance import collect
from benchmark.randomness import seed_model_noise
from benchmark.results import atomic_write_json, check_output_path
from benchmark.smoothing import SmoothedDefense, SmoothingConfig
from benchmark.spec import Spec
from benchmark.stats import wilson_interval

SWEEP_SCHEMA = "threatbench.smoothing-sweep/1"
SWEEP_INPUTS = ("clean", "pgd", "epgd")


def _adversarial_inputs(one_draw: SmoothedDefense, batch: AttackBatch, spec_attacks, eps: float,
                        seed: int, counter: PassCounter) -> dict[str, torch.Tensor]:
    inputs = {"clean": batch.x}
    for name in ("pgd", "epgd"):
        seed_model_noise(seed, f"smoothing-sweep/{name}", int(batch.indices[0]))
        params = spec_attacks[name]
        inputs[name] = run_white_box(name, one_draw, batch, params, eps, seed, counter,
                                     draws=params.draws if name == "epgd" else None)
    return inputs


def smoothing_sweep(model: nn.Module, *, dataset: str, spec: Spec, sigma: float, vote: str,
                    samples: list[int], n: int, seed: int | None = None, entry: dict[str, Any],
                    out: Path, data_dir=None, device: torch.device | str = "cpu",
                    batch_size: int = 100, progress: bool = True) -> dict[str, Any]:
    """Accuracy (with 95% Wilson intervals) of the m-draw vote on clean, PGD and EPGD inputs."""
    check_output_path(out)
    device = torch.device(device)
    dataset_spec = spec.dataset(dataset)
    seed = spec.seed if seed is None else seed
    num_classes = dataset_spec.num_classes
    one_draw = SmoothedDefense(model, num_classes, SmoothingConfig(1, sigma, vote), name=entry["name"])
    voters = {m: SmoothedDefense(model, num_classes, SmoothingConfig(m, sigma, vote), name=entry["name"])
              for m in samples}
    eval_set = load_evaluation_set(dataset, n, data_dir)
    correct = {(name, m): 0 for name in SWEEP_INPUTS for m in samples}
    counter, started = PassCounter(), time.perf_counter()
    batches = iterate_batches(eval_set, 0, batch_size, device)
    for batch in tqdm(batches, total=-(-len(eval_set) // batch_size), desc="smoothing sweep",
                      disable=not progress, leave=False):
        inputs = _adversarial_inputs(one_draw, batch, dataset_spec.attacks, dataset_spec.eps, seed, counter)
        for name, x in inputs.items():
            for m, voter in voters.items():
                seed_model_noise(seed, f"smoothing-sweep/predict/{name}/{m}", int(batch.indices[0]))
                correct[(name, m)] += int((voter.predict(x) == batch.y).sum())
    results = {name: {str(m): _summary(correct[(name, m)], len(eval_set), spec.confidence)
                      for m in samples} for name in SWEEP_INPUTS}
    record = {
        "schema": SWEEP_SCHEMA, "entry": entry, "dataset": dataset,
        "spec": {"version": spec.version, "sha256": spec.sha256}, "eps": dataset_spec.eps,
        "smoothing": {"sigma": sigma, "vote": vote, "samples": samples}, "n": len(eval_set),
        "subset_sha256": eval_set.sha256, "seed": seed,
        "attacks": {name: dataset_spec.attacks[name].as_dict() for name in ("pgd", "epgd")},
        "accuracy": results,
        "provenance": {**collect(device, batch_size=batch_size,
                                       total_seconds=time.perf_counter() - started),
                       "forward_passes": counter.forward, "backward_passes": counter.backward},
    }
    atomic_write_json(out, record)
    return record


def _summary(correct: int, n: int, confidence: float) -> dict[str, Any]:
    low, high = wilson_interval(correct, n, confidence)
    return {"accuracy": correct / n, "correct": correct, "interval": [low, high]}
