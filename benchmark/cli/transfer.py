"""The judge's held-out transfer sources: `train-source` trains one, `transfer-matrix` shows how
attacks crafted on each model transfer to the others."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import DEFAULT_BUDGET_HELP, add_common, pick_device, run_budget
from benchmark.errors import ThreatbenchError
from benchmark.spec import BUDGETS, load_spec


def command_train_source(args) -> int:
    from benchmark.attacks.sources import source_recipe
    from benchmark.models.training import train_standard
    from benchmark.runtime.cache import cache_dir

    recipe = source_recipe(args.dataset, args.name)
    out_dir = Path(args.out) if args.out else cache_dir() / "sources" / args.dataset / recipe.name()
    model = train_standard(recipe, out_dir, data_dir=args.data_dir, progress=not args.no_progress)
    print(f"held-out source {args.dataset}/{args.name} ({recipe.architecture}, seed {recipe.seed})")
    print(f"weights: {model.weights}")
    print(f"sha256:  {model.sha256}")
    print("to pin it: copy the weights to benchmark/resources/sources/ and put the sha256 in the spec")
    return 0


def _parse_model_argument(text: str) -> tuple[str, str, str]:
    name, _, rest = text.partition("=")
    arch, _, weights = rest.partition("@")
    if not name or not arch or not weights:
        raise ThreatbenchError(f"--model {text!r}: expected NAME=ARCH@WEIGHTS.safetensors, "
                               "e.g. A=mnist_a@A.safetensors")
    return name, arch, weights


def _matrix_models(args, dataset, device) -> list:
    """The --model checkpoints, then the spec's held-out sources."""
    from benchmark.attacks.sources import load_held_out_sources
    from benchmark.attacks.transfer import TransferSource
    from benchmark.models.defense import file_sha256, load

    models = []
    for text in args.model:
        name, arch, weights = _parse_model_argument(text)
        defense = load(arch, weights, num_classes=dataset.num_classes, in_channels=dataset.input_shape[0],
                       device=device, name=name)
        models.append(TransferSource(name, defense, file_sha256(weights)))
    held_out, reason = load_held_out_sources(dataset, device)
    if not held_out:
        print(f"note: no held-out source in the matrix: {reason}")
    models += [TransferSource(f"{s.name} (held-out)", s.defense, s.sha256) for s in held_out]
    if not models:
        raise ThreatbenchError("no models: give at least one --model NAME=ARCH@WEIGHTS.safetensors")
    return models


def command_transfer_matrix(args) -> int:
    from tabulate import tabulate

    from benchmark.attacks.sources import transfer_cache_dir
    from benchmark.attacks.transfer import TRANSFER_ATTACKS, TransferCache, transfer_matrix
    from benchmark.data import load_evaluation_set
    from benchmark.evaluation.batch_sizes import default_batch_size

    spec = load_spec()
    dataset = spec.dataset(args.dataset)
    device = pick_device(args.device)
    models = _matrix_models(args, dataset, device)
    name, reason = run_budget(args, device)
    print(f"transfer matrix on {args.dataset}, budget {name} ({reason})")
    budget = dataset.budget(name)
    eval_set = load_evaluation_set(args.dataset, budget.n, args.data_dir)
    seed = spec.seed if args.seed is None else args.seed
    cache = TransferCache(transfer_cache_dir())
    batch_size = default_batch_size(dataset, device)
    attacks = [args.attack] if args.attack else list(TRANSFER_ATTACKS)
    for attack in attacks:
        if attack not in TRANSFER_ATTACKS:
            raise ThreatbenchError(f"unknown transfer attack {attack!r}; choose from {', '.join(TRANSFER_ATTACKS)}")
        errors = transfer_matrix(models, attack, eval_set, dataset, seed=seed, spec_sha256=spec.sha256,
                                 cache=cache, batch_size=batch_size, device=device)
        print(f"\n{attack} error rates (%) on {args.dataset}, eps {dataset.eps:g}, n = {budget.n} "
              f"({name} budget): rows = source (crafted on), columns = target; diagonal = white-box")
        names = [m.name for m in models]
        print(tabulate([[names[r], *(f"{100 * e:.1f}" for e in row)] for r, row in enumerate(errors)],
                       headers=["source \\ target", *names], tablefmt="github"))
    print(f"\ntransfer cache: {cache.hits} chunk hits, {cache.misses} chunks crafted "
          f"({cache.crafted_seconds:.1f} s crafting)")
    return 0


# ---------------------------------------------------------------- parsers


def add_parsers(commands) -> None:
    train_source = commands.add_parser("train-source", help="train one of the judge's held-out sources")
    train_source.add_argument("--dataset", required=True)
    train_source.add_argument("--name", required=True, help="the source's name in the spec, e.g. B")
    add_common(train_source)
    train_source.set_defaults(handler=command_train_source)

    matrix = commands.add_parser("transfer-matrix", help="error rates of attacks crafted on each model "
                                 "(rows) against each model (columns)")
    matrix.add_argument("--dataset", required=True)
    matrix.add_argument("--model", action="append", default=[], help="NAME=ARCH@WEIGHTS.safetensors")
    matrix.add_argument("--attack", help="one of fgsm, rand_fgsm, ifgsm, pgd (default: all)")
    matrix.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    add_common(matrix)
    matrix.set_defaults(handler=command_transfer_matrix)
