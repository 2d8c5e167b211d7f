"""Measure NAttack's two parameterizations side by side: `python -m baselines.nattack_variants`.

The evidence behind spec v2's choice of the pixel-space search (docs/threat-model.md, "NAttack"): on
zoo entries and on constructed masked models, the fraction of the first n test images that stay
correctly classified under PGD, the margin-loss PGD, NAttack in the paper's tanh space and NAttack in
pixel space. Results are written as JSON (atomically) and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from baselines.zoo import entry_defense, load_zoo
from benchmark.attacks.gradient import AttackBatch, run_white_box
from benchmark.attacks.nattack import nattack
from benchmark.data import load_evaluation_set
from benchmark.evaluation.results import atomic_write_json
from benchmark.models.defense import Defense
from benchmark.spec import load_spec

DATASET = "fashion-mnist"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "leaderboard" / "diagnostics" / "nattack-variants.json"


class ScaledLastLayer(nn.Module):
    """A weight-only change: the last layer's weight and bias times `factor` (predictions unchanged)."""

    def __init__(self, model: nn.Module, factor: float):
        super().__init__()
        self.model = model
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(factor)
            if last.bias is not None:
                last.bias.mul_(factor)

    def forward(self, x):
        return self.model(x)


class BinarizedInput(nn.Module):
    """Non-differentiable preprocessing: pixels thresholded at 0.5, the graph to x is cut."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x > 0.5).float())


CONSTRUCTED_FROM = {"A x1024 (last layer)": "A"}


def zoo_entry_of(target: str) -> str:
    """The zoo entry whose weights a target uses: its own, or the base of a constructed variant."""
    return CONSTRUCTED_FROM.get(target, target.removesuffix(" binarized"))


def weights_sha256(target: str) -> str:
    """The sha256 of the zoo weights `target` is built from, as the zoo pins it today."""
    return load_zoo(DATASET).entry(zoo_entry_of(target)).sha256


def zoo_defense(name: str) -> Defense:
    return entry_defense(load_zoo(DATASET).entry(name), load_spec().dataset(DATASET).num_classes)


def targets(names: list[str]) -> dict[str, Defense]:
    built: dict[str, Defense] = {}
    for name in names:
        base = zoo_defense(zoo_entry_of(name))
        if name == "A x1024 (last layer)":
            built[name] = Defense(ScaledLastLayer(base.model, 1024.0), base.num_classes, name=name)
        elif name.endswith(" binarized"):
            built[name] = Defense(BinarizedInput(base.model), base.num_classes, name=name)
        else:
            built[name] = base
    return built


def measure(defense: Defense, x: torch.Tensor, y: torch.Tensor, iterations: int, seed: int) -> dict:
    dataset = load_spec().dataset(DATASET)
    batch = AttackBatch(x, y, torch.arange(len(x)))
    row: dict = {"clean": float((defense.predict(x) == y).float().mean())}
    for attack in ("pgd", "pgd_margin"):
        x_adv = run_white_box(attack, defense, batch, dataset.attacks[attack], dataset.eps, seed)
        row[attack] = float((defense.predict(x_adv) == y).float().mean())
    for parameterization in ("tanh", "pixel"):
        params = dataclasses.replace(dataset.nattack, parameterization=parameterization)
        started = time.perf_counter()
        result = nattack(defense, x, y, torch.arange(len(x)), eps=dataset.eps, params=params, seed=seed,
                         max_iterations=iterations)
        row[f"nattack_{parameterization}"] = float((defense.predict(result.x_adv) == y).float().mean())
        row[f"nattack_{parameterization}_median_queries"] = float(result.queries.float().median())
        row[f"nattack_{parameterization}_seconds"] = round(time.perf_counter() - started, 1)
    return row


def markdown(results: dict) -> str:
    header = ("| model | clean | PGD (CE) | PGD (margin) | NAttack tanh (paper) | NAttack pixel (v2) |\n"
              "|---|---|---|---|---|---|")
    lines = [header]
    for name, r in results["rows"].items():
        lines.append(f"| {name} | {100 * r['clean']:.0f} | {100 * r['pgd']:.0f} | {100 * r['pgd_margin']:.0f} "
                     f"| {100 * r['nattack_tanh']:.0f} | {100 * r['nattack_pixel']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="+",
                        default=["A", "A_adv", "D", "A x1024 (last layer)", "D binarized"])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    evaluation = load_evaluation_set(DATASET, args.n)
    x = torch.stack([evaluation[i][0] for i in range(args.n)])
    y = evaluation.labels[:args.n]
    results = {"dataset": DATASET, "n": args.n, "iterations": args.iterations, "seed": args.seed,
               "spec_sha256": load_spec().sha256, "rows": {}}
    if args.out.is_file():   # resume: rows measured with the same settings are kept
        previous = json.loads(args.out.read_text())
        if {k: previous.get(k) for k in ("n", "iterations", "seed")} == {k: results[k] for k in ("n", "iterations", "seed")}:
            results["rows"] = previous.get("rows", {})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.entries:
        if name in results["rows"]:
            continue
        results["rows"][name] = measure(targets([name])[name], x, y, args.iterations, args.seed)
        atomic_write_json(args.out, results)   # each finished row survives an interruption
        print(f"{name}: {results['rows'][name]}", flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()
