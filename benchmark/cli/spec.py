"""`threatbench spec`: the threat-model spec as tables."""

from __future__ import annotations

from benchmark.cli.common import SPEC_FILE_HELP
from benchmark.spec import Spec, load_spec


def _describe_source(source) -> str:
    if source.sha256:
        return f"{source.name} = {source.architecture} ({source.weights}, sha256 {source.sha256[:12]}...)"
    if source.hub:
        return f"{source.name} = {source.architecture} (Hub {source.hub.repo}@{source.hub.revision[:12]}, sha256 not pinned)"
    return f"{source.name} = {source.architecture} (weights not pinned yet)"


def _preamble(spec: Spec) -> list[str]:
    return [f"threat-model spec v{spec.version} ({spec.schema}), sha256 {spec.sha256}",
            f"norm {spec.norm}, pixels in [0, 1], default seed {spec.seed}, "
            f"{100 * spec.confidence:g}% Wilson intervals",
            f"randomized defenses: EOT on every gradient, accuracy = mean of "
            f"{spec.randomized.prediction_repeats} predictions"
            + (f", fixed batches of {spec.randomized.batch_size} (NAttack {spec.randomized.nattack_batch_size})"
               if spec.randomized.batch_size else "") + "; masking check: PGD at eps "
            f"{spec.diagnostics.unbounded_pgd_eps:g} on {spec.diagnostics.unbounded_pgd_examples} examples"]


def _dataset_tables(spec: Spec, name: str) -> list[str]:
    from tabulate import tabulate

    d = spec.dataset(name)
    n = d.nattack
    return [
        f"\n## {name}: eps {d.eps:g}, {d.num_classes} classes, input {list(d.input_shape)}",
        tabulate([
            ["architectures", ", ".join(d.architectures)],
            ["trained architecture", d.trained_architecture],
            ["static models (ens-adv)", ", ".join(d.static_models) or "-"],
            ["held-out sources", "; ".join(_describe_source(h) for h in d.held_out_sources) or "-"],
            *([["preprocessing", str(d.preprocessing.as_dict())]] if d.preprocessing else []),
        ], tablefmt="github", headers=["models", ""]),
        tabulate(
            [[a, p.label, p.alpha, p.steps, p.step_size, p.random_start, p.draws]
             for a, p in d.attacks.items()],
            headers=["white-box attack", "label", "alpha", "steps", "step size", "random start", "draws"],
            tablefmt="github", missingval="-"),
        tabulate([[n.population, n.sigma, n.learning_rate, n.max_iterations,
                   n.check_every, list(n.search_shape), n.parameterization, n.score_draws]],
                 headers=["nattack population", "sigma", "lr", "max iterations",
                          "check every", "search shape", "search space",
                          "score draws (randomized)"], tablefmt="github"),
        tabulate([[b.name, "yes" if b.ranked else "no", b.n, b.nattack_n,
                   b.nattack_max_iterations or n.max_iterations,
                   "-" if b.smoothed_n is None else f"{b.smoothed_n} ({b.smoothed_nattack_n})"]
                  for b in d.budgets.values()],
                 headers=["budget", "ranked", "n", "nattack subsample", "nattack iterations",
                          "smoothed entries: n (subsample)"],
                 tablefmt="github"),
    ]


def _adaptive_policy(spec: Spec) -> str:
    cascade = ("NAttack attacks only the examples that survived clean, white-box and transfer (the cascade)"
               if spec.adaptive.cascade else "NAttack attacks every example of its subsample")
    subsample = ("a seeded, uniformly random subsample" if spec.adaptive.subsample == "uniform"
                 else "the first examples")
    return (f"\nadaptive family: {cascade}, on {subsample} of the n; the ranking key is "
            + ("estimated as p * q (docs/ranking.md)" if spec.adaptive.subsample == "uniform"
               else "the worst case on that subsample"))


def format_spec(spec: Spec, dataset: str | None = None) -> str:
    names = [dataset] if dataset else list(spec.datasets)
    blocks = _preamble(spec)
    for name in names:
        blocks += _dataset_tables(spec, name)
    blocks.append(_adaptive_policy(spec))
    return "\n".join(blocks)


def command_spec(args) -> int:
    print(format_spec(load_spec(args.spec), args.dataset))
    return 0


def add_parsers(commands) -> None:
    spec = commands.add_parser("spec", help="print the threat-model spec as tables")
    spec.add_argument("--dataset")
    spec.add_argument("--spec", help=SPEC_FILE_HELP)
    spec.set_defaults(handler=command_spec)
