"""How many inner attack steps a multi-step defense trains with: `python -m baselines.inner_steps`.

Multi-step adversarial training (Madry et al. PGD, TRADES, PNI/CNI) costs about (steps + 1) forward
and backward passes per batch, so on a 2-core CPU the number of inner steps decides how many epochs
fit in a training budget. Rather than guess, this trains each recipe for a short, equal schedule at
several step counts (step size 2.5 eps / steps, Madry et al.'s rule) and measures what each buys:
clean accuracy and the judge's PGD accuracy (the spec's PGD, eps and random start) on the first test
images, keeping every example's outcome so that step counts are compared on the same examples by an
exact paired test. The recipes cite the result (docs/inner-steps.md). Each finished point is saved
atomically, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from baselines.recipes import load_recipe
from baselines.train import train_recipe
from benchmark.attacks.gradient import AttackBatch, run_white_box
from benchmark.data import load_evaluation_set
from benchmark.evaluation.results import atomic_write_json
from benchmark.evaluation.stats import paired_test, wilson_interval
from benchmark.models.defense import load as load_defense
from benchmark.runtime.cache import cache_dir
from benchmark.runtime.randomness import seed_model_noise
from benchmark.spec import load_spec

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "leaderboard" / "diagnostics" / "inner-steps"
DEFAULT_STEPS = (2, 4, 7, 10)
# One-sided, per comparison with the best point. No multiplicity correction on purpose: a correction
# would make a cheaper count easier to accept, and the error to avoid is training with too few steps.
ALPHA = 0.05


def study_recipe(recipe_path: str, steps: int, train_images: int, epochs: int):
    """The recipe cut to the study's schedule, with `steps` inner steps of 2.5 eps / steps."""
    recipe = load_recipe(recipe_path)
    adversary = {**recipe.adversary, "steps": steps, "step_size": round(2.5 * recipe.adversary["eps"] / steps, 6)}
    if "delay_epochs" in adversary:   # no clean-only epoch: the short schedule is all adversarial
        adversary["delay_epochs"] = 0
    return dataclasses.replace(recipe, epochs=epochs, save_epochs=(), train_limit=train_images,
                               adversary=adversary, sha256=f"{recipe.sha256[:48]}-steps{steps}-{train_images}-{epochs}")


def pgd_outcomes(weights: Path, architecture: str, n: int, seed: int) -> tuple[float, list[int], int]:
    """(clean accuracy, per-example PGD correct counts, repeats) on the first n test images, by the
    judge's criterion: the spec's PGD, or for a noisy (randomized) model its EOT PGD (`epgd`, every
    gradient averaged over the spec's draws), each example counted over the spec's repeated
    predictions."""
    spec = load_spec()
    dataset = spec.dataset("fashion-mnist")
    randomized = architecture.split(":", 1)[0] in ("pni", "cni")
    attack, repeats = ("epgd", spec.randomized.prediction_repeats) if randomized else ("pgd", 1)
    eval_set = load_evaluation_set("fashion-mnist", n)
    defense = load_defense(architecture, weights, num_classes=dataset.num_classes, randomized=randomized)
    clean, robust = 0.0, []
    for start in range(0, n, 250):
        items = [eval_set[i] for i in range(start, min(start + 250, n))]
        batch = AttackBatch(torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items]),
                            torch.arange(start, start + len(items)))
        seed_model_noise(seed, "inner-steps", start)
        x_adv = run_white_box(attack, defense, batch, dataset.attacks[attack], dataset.eps, seed)
        correct = torch.zeros(len(items), dtype=torch.int64)
        for _ in range(repeats):
            clean += float((defense.predict(batch.x) == batch.y).sum()) / repeats
            correct += (defense.predict(x_adv) == batch.y).long()
        robust += correct.tolist()
    return clean / n, robust, repeats


def run_study(recipe_path: str, steps_list: tuple[int, ...], *, train_images: int, epochs: int, n: int,
              out_dir: Path) -> dict:
    name = load_recipe(recipe_path).name
    path = out_dir / f"{name}.json"
    study = json.loads(path.read_text()) if path.is_file() else {
        "recipe": recipe_path, "train_images": train_images, "epochs": epochs, "eval_n": n,
        "attack": "the spec's PGD (fashion-mnist, eps 0.1); EOT PGD (epgd) and the mean of the spec's "
                  "repeated predictions for a noisy model", "points": []}
    done = {point["steps"] for point in study["points"]}
    for steps in steps_list:
        if steps in done:
            continue
        recipe = study_recipe(recipe_path, steps, train_images, epochs)
        directory = cache_dir() / "inner-steps" / f"{name}-steps{steps}-{train_images}-{epochs}"
        run = train_recipe(recipe, directory, progress=False)
        seconds = json.loads((directory / "model.json").read_text())["training"]["seconds"]   # cached runs too
        clean, correct, repeats = pgd_outcomes(run.final.path, recipe.architecture, n, load_spec().seed)
        robust = sum(correct) / (repeats * n)
        study["points"].append({"steps": steps, "step_size": recipe.adversary["step_size"],
                                "train_seconds": round(seconds, 1), "clean": clean, "pgd": robust,
                                "repeats": repeats, "pgd_correct": correct})
        study["points"].sort(key=lambda point: point["steps"])
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, study)
        print(f"{name}: {steps} steps -> clean {100 * clean:.1f}%, PGD {100 * robust:.1f}% "
              f"({seconds / 60:.1f} min of training)", flush=True)
    return study


PAGE = Path(__file__).resolve().parent.parent / "docs" / "inner-steps.md"


def _outcomes(point: dict) -> np.ndarray:
    """A point's per-example outcomes as bool [repeats, n] (example i correct in its first k repeats)."""
    counts = np.asarray(point["pgd_correct"])
    return np.arange(point["repeats"])[:, None] < counts[None, :]


def below_best_p(point: dict, best: dict) -> float | None:
    """One-sided exact paired p-value that `best` is correct more often than `point` on the same
    examples (McNemar's test; the sign test on fractions over repeats for a noisy model); None when
    the study kept no per-example outcomes."""
    if "pgd_correct" not in point or "pgd_correct" not in best:
        return None
    return 1.0 if point is best else paired_test(_outcomes(best), _outcomes(point)).p_value


def chosen_steps(points: list[dict], n: int) -> int:
    """The fewest steps whose PGD accuracy is not significantly below the best point's: more steps
    cost time that buys no measurable robustness. Significance is the exact paired test at ALPHA on
    the per-example outcomes; a study without them (older evidence) falls back to overlapping 95%
    Wilson intervals, a much weaker test."""
    best = max(points, key=lambda p: p["pgd"])
    best_low = wilson_interval(round(best["pgd"] * n), n)[0]

    def not_below(point: dict) -> bool:
        p_value = below_best_p(point, best)
        if p_value is not None:
            return p_value >= ALPHA
        return wilson_interval(round(point["pgd"] * n), n)[1] >= best_low
    return min(p["steps"] for p in points if not_below(p))


def render_page(out_dir: Path = DEFAULT_DIR) -> str:
    lines = ["# How many inner attack steps the multi-step baselines train with", "",
             "<!-- generated by `python -m baselines.inner_steps --page`; do not edit by hand -->", "",
             "Each multi-step recipe was trained for one short, equal schedule at several inner step "
             "counts (step size 2.5 eps / steps, Madry et al.'s rule), then judged on the first test "
             "images with the spec's PGD (40 steps, random start, eps 0.1; for the noisy PNI model its "
             "EOT PGD, every gradient averaged over 8 draws, and the mean of 5 predictions). The recipe takes the "
             "fewest steps whose PGD accuracy is not significantly below the best, since each step costs "
             "about one more forward and backward pass per batch. Significance: an exact paired test on "
             "the same test images (McNemar's; for a noisy model the sign test on each image's fraction "
             f"correct over repeats), one-sided, p < {ALPHA}, with no multiplicity correction, which "
             "would make fewer steps easier to accept. A study that kept no per-example outcomes (marked "
             "below) was decided by overlapping 95% Wilson intervals, a much weaker test that favours "
             "fewer steps. Training times are wall times on 2 CPU cores. Evidence: "
             "`leaderboard/diagnostics/inner-steps/`.", "",
             "A short schedule cannot show catastrophic overfitting (Wong et al. 2020, arXiv:2001.03994): "
             "training with few, large steps can hold its PGD accuracy for an epoch and then lose it "
             "within the next ones. So the candidate below is only a candidate until a longer run of it "
             "and of the next larger step count agree; the recipe cites the run that decided.", ""]
    for path in sorted(out_dir.glob("*.json")):
        study = json.loads(path.read_text())
        n, points = study["eval_n"], study["points"]
        lines += [f"## {study['recipe']}", "",
                  f"{study['epochs']} epoch(s) on the first {study['train_images']:,} training images; "
                  f"accuracy on the first {n:,} test images.", "",
                  "| inner steps | step size | training (min) | clean % | PGD % [95% CI] | p (below the best) |",
                  "|---|---|---|---|---|---|"]
        best = max(points, key=lambda p: p["pgd"]) if points else None
        for point in points:
            low, high = wilson_interval(round(point["pgd"] * n), n)
            p_value = below_best_p(point, best)
            shown = "best" if point is best else "n/a" if p_value is None else f"{p_value:.2g}"
            lines.append(f"| {point['steps']} | {point['step_size']:g} | {point['train_seconds'] / 60:.1f} | "
                         f"{100 * point['clean']:.1f} | {100 * point['pgd']:.1f} [{100 * low:.1f}, {100 * high:.1f}] "
                         f"| {shown} |")
        if points:
            paired = all("pgd_correct" in point for point in points)
            rule = "exact paired test" if paired else \
                "overlapping Wilson intervals: this study kept no per-example outcomes; rerun it for the paired test"
            lines += ["", f"Fewest steps not significantly below the best ({rule}): "
                          f"**{chosen_steps(points, n)}**.", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipes under baselines/recipes/, e.g. fashion-mnist/A_madry.toml")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n", type=int, default=1000, help="test images for clean and PGD accuracy")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--page", action="store_true", help=f"write {PAGE.name} from the finished studies")
    args = parser.parse_args(argv)
    if args.page:
        PAGE.write_text(render_page(args.out_dir))
        print(f"wrote {PAGE}")
    for recipe in args.recipes:
        run_study(recipe, tuple(args.steps), train_images=args.train_images, epochs=args.epochs, n=args.n,
                  out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
