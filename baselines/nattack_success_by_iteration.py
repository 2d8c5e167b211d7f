"""When does NAttack succeed? `python -m baselines.nattack_success_by_iteration [--entries ...]`.

The evidence behind the `standard` budget's NAttack iteration cap (docs/nattack-success-by-iteration.md).
For each target, the judge first runs clean, white-box and transfer on the first n test images
(`evaluate` with those two families, so randomized entries get EOT and repeated predictions); the
survivors are the examples correct under all of them in at least one repeat, exactly the examples
the cascade hands to NAttack. NAttack (spec v2, pixel space) then runs on them for up to
`--iterations` iterations, and each example's success iteration is recorded: the smallest cap under
which the same search would have found it (the search's draws depend only on the example).

One JSON file per target, written atomically after every NAttack batch, so an interrupted run
resumes where it stopped; `--page` writes the page and its plot from whatever is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from baselines.nattack_variants import targets, weights_sha256
from benchmark.attacks.nattack import nattack
from benchmark.data import load_evaluation_set
from benchmark.evaluation.loop import evaluate
from benchmark.evaluation.plan import judge_criterion
from benchmark.evaluation.results import atomic_write_json, atomic_write_text
from benchmark.runtime.randomness import seed_model_noise
from benchmark.spec import Budget, load_spec

DATASET = "fashion-mnist"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "leaderboard" / "diagnostics" / "nattack-success-by-iteration"
PAGE = ROOT / "docs" / "nattack-success-by-iteration.md"
PLOT = ROOT / "docs" / "nattack-success-by-iteration.svg"
DEFAULT_N = {"D": 100, "D binarized": 50, "A x1024 (last layer)": 50, "A_adv": 80, "A binarized": 20}
KEEP = 0.95   # the cap keeps at least this fraction of the successes found by the longest search


def survivors(defense, n: int, seed: int) -> tuple[np.ndarray, int]:
    """Indices among the first n surviving clean, white-box and transfer (any repeat), and repeats."""
    spec = load_spec()
    budget = Budget("success-by-iteration", n=n, nattack_n=n)
    small = spec.with_budget(DATASET, budget)
    result = evaluate(defense, DATASET, budget=budget.name, spec=small, seed=seed,
                      families=("white_box", "transfer"), progress=False)
    names = ["clean", *(name for name, m in result.record["attacks"].items()
                        if m["family"] in ("white_box", "transfer"))]
    alive = np.logical_and.reduce([result.outcomes[name].correct for name in names]).any(axis=0)
    return np.flatnonzero(alive), result.outcomes["clean"].repeats


def measure(name: str, n: int, iterations: int, seed: int, out: Path) -> dict:
    defense = targets([name])[name]
    state = json.loads(out.read_text()) if out.is_file() else {}
    nattack_params = dataclasses.asdict(load_spec().dataset(DATASET).nattack)
    nattack_params.pop("max_iterations")
    nattack_params["search_shape"] = list(nattack_params["search_shape"])
    settings = {"target": name, "n": n, "max_iterations": iterations, "seed": seed,
                "weights_sha256": weights_sha256(name)}
    # Resumes across spec edits that leave NAttack alone; the spec's sha256 is kept for the record.
    # New weights (or a state from before weights were recorded) start the target afresh.
    if {k: state.get(k) for k in settings} != settings or state.get("nattack", nattack_params) != nattack_params:
        state = {**settings, "examples": {}}
    state.update(nattack=nattack_params, spec_sha256=load_spec().sha256)
    if "survivors" not in state:
        started = time.perf_counter()
        alive, repeats = survivors(defense, n, seed)
        state.update(survivors=[int(i) for i in alive], repeats=repeats,
                     survivor_seconds=round(time.perf_counter() - started, 1))
        atomic_write_json(out, state)
    dataset = load_spec().dataset(DATASET)
    params = dataclasses.replace(dataset.nattack, max_iterations=iterations)
    evaluation = load_evaluation_set(DATASET, n)
    todo = [i for i in state["survivors"] if str(i) not in state["examples"]]
    batch = 4
    bar = tqdm(total=len(state["survivors"]), initial=len(state["survivors"]) - len(todo), desc=name[:24])
    for start in range(0, len(todo), batch):
        rows = todo[start:start + batch]
        x = torch.stack([evaluation[i][0] for i in rows])
        y = evaluation.labels[rows]
        seed_model_noise(seed, "nattack", rows[0])
        began = time.perf_counter()
        result = nattack(defense, x, y, torch.tensor(rows), eps=dataset.eps, params=params, seed=seed,
                         still_correct=judge_criterion(defense, state["repeats"]),
                         criterion_queries=state["repeats"])
        seconds = time.perf_counter() - began
        for k, i in enumerate(rows):
            state["examples"][str(i)] = {"success": not bool(result.correct[k]),
                                         "iterations": int(result.iterations[k]),
                                         "queries": int(result.queries[k])}
        state["nattack_seconds"] = round(state.get("nattack_seconds", 0.0) + seconds, 1)
        atomic_write_json(out, state)
        bar.update(len(rows))
    bar.close()
    return state


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


# ---------------------------------------------------------------- the page


def success_iterations(state: dict) -> list[int]:
    return sorted(e["iterations"] for e in state["examples"].values() if e["success"])


def smallest_cap(iterations: list[int], keep: float = KEEP) -> int | None:
    """The smallest cap under which at least `keep` of these successes are found."""
    if not iterations:
        return None
    ordered = sorted(iterations)
    return ordered[int(np.ceil(keep * len(ordered))) - 1]


def cumulative(iterations: list[int], grid: np.ndarray) -> np.ndarray:
    ordered = np.sort(np.asarray(iterations))
    return np.searchsorted(ordered, grid, side="right") / max(1, len(ordered))


def plot(states: dict[str, dict], max_iterations: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.arange(0, max_iterations + 1)
    figure, axes = plt.subplots(figsize=(7, 4))
    pooled = [i for s in states.values() for i in success_iterations(s)]
    for name, state in states.items():
        found = success_iterations(state)
        if found:
            axes.step(grid, cumulative(found, grid), where="post", label=f"{name} ({len(found)})")
    if pooled:
        axes.step(grid, cumulative(pooled, grid), where="post", color="black", linewidth=2,
                  label=f"all ({len(pooled)})")
    axes.axhline(KEEP, color="grey", linestyle=":")
    cap = load_spec().dataset(DATASET).budget("standard").nattack_max_iterations
    axes.axvline(cap, color="red", linestyle="--", linewidth=1, label=f"standard cap ({cap})")
    axes.set_xscale("symlog", linthresh=10)   # early successes and the tail on one axis
    axes.set_xlabel("NAttack iteration cap")
    axes.set_ylabel(f"fraction of successes found by {max_iterations}")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    matplotlib.rcParams["svg.hashsalt"] = "threatbench"   # stable bytes
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def table(states: dict[str, dict]) -> str:
    lines = ["| target | weights | examples | survivors (clean, white-box, transfer) | NAttack successes | "
             "median success iteration | cap keeping 95% | NAttack seconds |", "|---|---|---|---|---|---|---|---|"]
    pooled = []
    for name, state in states.items():
        found = success_iterations(state)
        pooled += found
        measured = len(state["examples"])
        cap = smallest_cap(found)
        lines.append(f"| {name} | {weights_cell(name, state)} | {state['n']} | "
                     f"{len(state['survivors'])} (NAttack done on {measured}) | "
                     f"{len(found)} | {np.median(found) if found else '-'} | {cap if cap is not None else '-'} | "
                     f"{state.get('nattack_seconds', 0):.0f} |")
    cap = smallest_cap(pooled)
    lines.append(f"| **all** | | | | {len(pooled)} | {np.median(pooled) if pooled else '-'} | "
                 f"**{cap if cap is not None else '-'}** | |")
    return "\n".join(lines)


def weights_cell(name: str, state: dict) -> str:
    """Which weights were searched: the zoo's current ones, or say that the evidence is older."""
    recorded = state.get("weights_sha256")
    if recorded is None:
        return "not recorded (older evidence, possibly of other weights)"
    if recorded != weights_sha256(name):
        return f"`{recorded[:12]}`, not the zoo's current weights"
    return f"`{recorded[:12]}` (current)"


def cumulative_rows(states: dict[str, dict], caps: tuple[int, ...]) -> str:
    pooled = [i for s in states.values() for i in success_iterations(s)]
    header = "| cap | " + " | ".join(states) + " | all |"
    lines = [header, "|---" * (len(states) + 2) + "|"]
    for cap in caps:
        cells = []
        for state in [*states.values(), None]:
            found = pooled if state is None else success_iterations(state)
            cells.append("-" if not found else f"{100 * float(cumulative(found, np.array([cap]))[0]):.0f}%")
        lines.append(f"| {cap} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kept(found: list[int], cap: int) -> str:
    if not found:
        return "all (none was found)"
    return f"{sum(1 for i in found if i <= cap)} of {len(found)}"


def per_target_kept(states: dict[str, dict], cap: int) -> str:
    short = [f"{name}: {kept(success_iterations(s), cap)}" for name, s in states.items()
             if any(i > cap for i in success_iterations(s))]
    return "" if not short else " (short of it: " + "; ".join(short) + ")"


def cap_verdict(pooled: list[int], cap: int) -> str:
    late = sum(1 for i in pooled if i > cap)
    if not late:
        return ("With so few successes the rule keeps all of them, so one late success moves the cap: a "
                "larger sample (a future spec version) would estimate the tail better.")
    return (f"**The frozen cap misses {late} of the {len(pooled)} successes measured here**, so a ranked "
            "key at `standard` can overstate an entry's robustness by the survivors NAttack would break "
            f"after iteration {cap} ([ranking.md](ranking.md#budgets) says what that means for the "
            "ranking); a future spec version should raise the cap.")


def page(states: dict[str, dict], max_iterations: int) -> str:
    spec = load_spec()
    cap = spec.dataset(DATASET).budget("standard").nattack_max_iterations
    caps = tuple(sorted({1, 5, 10, 20, 30, 50, 100, 200, max_iterations, cap}))
    pooled = [i for s in states.values() for i in success_iterations(s)]
    per_target = [smallest_cap(success_iterations(s)) for s in states.values()]
    strictest = max((c for c in per_target if c is not None), default=None)
    return f"""# NAttack: successes by iteration

<!-- generated by `python -m baselines.nattack_success_by_iteration --page` from
leaderboard/diagnostics/nattack-success-by-iteration/; do not edit by hand -->

How many NAttack iterations does the `standard` budget need? Under the cascade NAttack only attacks
examples that survived clean, every white-box attack and every transfer attack, so what matters is
when NAttack breaks *those*. For each target below, the judge ran clean, white-box and transfer on
the first test images; NAttack (spec v2: pixel space, population 300, sigma 0.1, learning rate 0.02)
then searched every survivor for up to {max_iterations} iterations (the paper's budget). An
example's success iteration is the smallest cap under which the same search finds it (its draws
depend only on the example, so a shorter run is a prefix of a longer one).

The targets are robust zoo entries (A_adv: single-step adversarial training; A_madry: PGD
adversarial training; A_pni: noise injection, randomized), an undefended static model (D), and
constructed masked models that defeat gradients: the input binarized at 0.5 (a cut graph, so
white-box attacks see no gradient), and zoo A with its last layer scaled by 1024 (the margin-loss PGD
breaks every example, so no survivor is left). The weights column says which weights were searched;
evidence from weights the zoo no longer has is shown, and says so.

![cumulative fraction of NAttack successes by iteration](nattack-success-by-iteration.svg)

{table(states)}

Cumulative fraction of each target's successes found by a cap:

{cumulative_rows(states, caps)}

**The rule.** The cap is the smallest number of iterations that keeps at least {KEEP:.0%} of the
successes found by {max_iterations} iterations: over all targets pooled, {smallest_cap(pooled)}; for the
strictest single target, {strictest}. The rule takes the larger of the two. Spec
{spec.version} (frozen) caps it at **{cap} iterations**, which keeps {kept(pooled, cap)} of the successes
measured here{per_target_kept(states, cap)}.

{cap_verdict(pooled, cap)} NAttack's cost grows with the cap (a survivor it cannot break costs
population x cap queries), and the cap is what makes `standard` finish on a CPU.

Reproduce: `python -m baselines.nattack_success_by_iteration` (it resumes; each target's survivors and
every example's outcome are in `leaderboard/diagnostics/nattack-success-by-iteration/`), then
`--page` to rewrite this page and its plot.
"""


def load_states(directory: Path) -> dict[str, dict]:
    """Every target's evidence in `directory`, by target name, in file order."""
    states = {}
    for path in sorted(directory.glob("*.json")):
        state = json.loads(path.read_text())
        states[state["target"]] = state
    return states


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="+",
                        default=["D", "D binarized", "A x1024 (last layer)", "A_adv", "A_pni", "A binarized"])
    parser.add_argument("--n", type=int, default=40, help="first test images per target (some have their own)")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--page", action="store_true", help="only write the page and its plot from what is measured")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    if not args.page:
        for name in args.entries:
            n = DEFAULT_N.get(name, args.n)
            measure(name, n, args.iterations, args.seed, args.dir / f"{file_stem(name)}.json")
    states = load_states(args.dir)
    if states:
        # Evidence kept elsewhere (--dir) gets its page beside it: docs/ shows the committed evidence.
        page_path, plot_path = (PAGE, PLOT) if args.dir == DEFAULT_DIR else (args.dir / PAGE.name,
                                                                            args.dir / PLOT.name)
        plot(states, args.iterations, plot_path)
        atomic_write_text(page_path, page(states, args.iterations))
        print(table(states))


if __name__ == "__main__":
    main()
