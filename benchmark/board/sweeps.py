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

from benchmark.attacks.batches import iterate_batches
from benchmark.attacks.gradient import AttackBatch, PassCounter, run_white_box
from benchmark.data import load_evaluation_set
from benchmark.evaluation.results import atomic_write_json, check_output_path
from benchmark.evaluation.stats import wilson_interval
from benchmark.models.smoothing import SmoothedDefense, SmoothingConfig
from benchmark.runtime.provenance import collect
from benchmark.runtime.randomness import seed_model_noise
from benchmark.spec import Spec

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
    unanimous = {(name, m): 0 for name in SWEEP_INPUTS for m in samples}
    counter, started = PassCounter(), time.perf_counter()
    batches = iterate_batches(eval_set, 0, batch_size, device)
    for batch in tqdm(batches, total=-(-len(eval_set) // batch_size), desc="smoothing sweep",
                      disable=not progress, leave=False):
        inputs = _adversarial_inputs(one_draw, batch, dataset_spec.attacks, dataset_spec.eps, seed, counter)
        for name, x in inputs.items():
            for m, voter in voters.items():
                seed_model_noise(seed, f"smoothing-sweep/predict/{name}/{m}", int(batch.indices[0]))
                votes = voter.scores(x)      # argmax is `predict`: ties to the lowest class index
                correct[(name, m)] += int((votes.argmax(dim=1) == batch.y).sum())
                unanimous[(name, m)] += int((votes.max(dim=1).values == 1).sum())
    # How often every draw agrees: where they all do, a vote over more draws changes nothing.
    results = {name: {str(m): {**_summary(correct[(name, m)], len(eval_set), spec.confidence),
                               "unanimous": unanimous[(name, m)]}
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


# ---------------------------------------------------------------- accuracy vs eps

EPS_SWEEP_SCHEMA = "threatbench.eps-sweep/1"


def eps_sweep(defense, *, dataset: str, spec: Spec, eps_values: list[float], n: int, entry: dict[str, Any],
              out: Path, seed: int | None = None, data_dir=None, device: torch.device | str = "cpu",
              batch_size: int = 100, progress: bool = True) -> dict[str, Any]:
    """PGD accuracy (EPGD for a randomized defense) at each eps, the spec's schedule scaled to eps.

    The step size is the spec's step_size * eps / spec eps, so every point takes the same number of
    steps with the same total path relative to its ball (2.5 eps for the Fashion-MNIST spec).
    """
    check_output_path(out)
    device = torch.device(device)
    dataset_spec = spec.dataset(dataset)
    seed = spec.seed if seed is None else seed
    name = "epgd" if defense.randomized else "pgd"
    params = dataset_spec.attacks[name]
    eval_set = load_evaluation_set(dataset, n, data_dir)
    points, counter, started = [], PassCounter(), time.perf_counter()
    for eps in tqdm(eps_values, desc="eps sweep", disable=not progress, leave=False):
        scaled = params.at_eps(eps, dataset_spec.eps)
        correct = 0
        for batch in iterate_batches(eval_set, 0, batch_size, device):
            seed_model_noise(seed, f"eps-sweep/{name}/{eps}", int(batch.indices[0]))
            x_adv = run_white_box(name, defense, batch, scaled, eps, seed, counter,
                                  draws=params.draws if name == "epgd" else None)
            seed_model_noise(seed, f"eps-sweep/predict/{eps}", int(batch.indices[0]))
            correct += int((defense.predict(x_adv) == batch.y).sum())
        points.append({"eps": eps, **_summary(correct, len(eval_set), spec.confidence)})
    record = {
        "schema": EPS_SWEEP_SCHEMA, "entry": entry, "dataset": dataset,
        "spec": {"version": spec.version, "sha256": spec.sha256}, "spec_eps": dataset_spec.eps,
        "attack": {"name": name, **params.as_dict(), "step_size": f"{params.step_size} * eps / {dataset_spec.eps}"},
        "n": len(eval_set), "subset_sha256": eval_set.sha256, "seed": seed, "points": points,
        "provenance": {**collect(device, batch_size=batch_size, total_seconds=time.perf_counter() - started),
                       "forward_passes": counter.forward, "backward_passes": counter.backward},
    }
    atomic_write_json(out, record)
    return record


def plot_eps_sweeps(records: list[dict[str, Any]], out: Path) -> Path:
    """Accuracy vs eps, one line per entry with its 95% intervals; PNG without a timestamp."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6.4, 4.2), dpi=110)
    for record in sorted(records, key=lambda r: r["entry"]["name"]):
        eps = [p["eps"] for p in record["points"]]
        accuracy = [100 * p["accuracy"] for p in record["points"]]
        low = [100 * (p["accuracy"] - p["interval"][0]) for p in record["points"]]
        high = [100 * (p["interval"][1] - p["accuracy"]) for p in record["points"]]
        axes.errorbar(eps, accuracy, yerr=[low, high], marker="o", markersize=3, capsize=2,
                      label=f"{record['entry']['name']} ({record['attack']['name']})")
    if records:
        axes.axvline(records[0]["spec_eps"], color="grey", linestyle=":", label="spec eps")
        axes.set_title(f"{records[0]['dataset']}: accuracy under PGD vs eps (n = {records[0]['n']})")
    axes.set_xlabel("eps (L-inf, pixels in [0, 1])")
    axes.set_ylabel("accuracy %")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, metadata={"Software": None})
    pyplot.close(figure)
    return out
