"""The baseline zoo: `train` a recipe, `zoo export` its weights, `zoo table` the zoo's numbers."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import Parser, add_runtime, pick_device


def command_train(args) -> int:
    # The CLI is the front-end, not the judge: only these commands reach into baselines/.
    from baselines.recipes import load_recipe
    from baselines.train import train_recipe

    device = pick_device(args.device)
    recipe = load_recipe(args.recipe)
    print(f"training {recipe.name} ({recipe.trainer}, {recipe.architecture}) on {recipe.dataset} "
          f"for {recipe.epochs} epochs; recipe sha256 {recipe.sha256}")
    run = train_recipe(recipe, Path(args.out) if args.out else None, data_dir=args.data_dir,
                       progress=not args.no_progress, device=device)
    print(f"weights: {run.final.path}")
    print(f"sha256:  {run.final.sha256}")
    for epoch, snapshot in sorted(run.snapshots.items()):
        print(f"after epoch {epoch}: {snapshot.path} (sha256 {snapshot.sha256})")
    return 0


def command_zoo_export(args) -> int:
    from baselines.recipes import load_recipe
    from baselines.train import train_recipe
    from baselines.zoo import export_entry

    recipe = load_recipe(args.recipe)
    run = train_recipe(recipe, progress=not args.no_progress)   # returns at once when already trained
    entry = export_entry(run, name=args.name or recipe.name, role=args.role, epoch=args.epoch,
                         storage=args.storage, paper=args.paper or "", commit=not args.rebuild)
    print(f"zoo entry {entry['name']}: weights {entry['weights']} (sha256 {entry['sha256']}, epoch "
          f"{entry['epoch']}, {entry['storage']})")
    return 0


def command_zoo_table(args) -> int:
    from baselines.zoo_table import write_readme_table, zoo_table

    print(zoo_table(args.dataset))
    if args.write_readme:
        write_readme_table()
        print("README.md: zoo table written")
    return 0


# ---------------------------------------------------------------- parsers


def _add_zoo(commands) -> None:
    zoo = commands.add_parser("zoo", help="manage the baseline zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True, parser_class=Parser)
    export = zoo_commands.add_parser("export", help="copy a trained recipe's weights into the zoo")
    export.add_argument("recipe", help="recipe file, or a path under baselines/recipes/")
    export.add_argument("--name", help="entry name (default: the recipe's name)")
    export.add_argument("--role", choices=["defense", "undefended", "static"], default="defense")
    export.add_argument("--epoch", type=int, help="a saved epoch (save_epochs) instead of the final one")
    export.add_argument("--storage", choices=["float32", "float16"], default="float16")
    export.add_argument("--paper", help="URL of the paper the baseline follows")
    export.add_argument("--rebuild", action="store_true",
                        help="do not commit the weights: pin the sha256 of the run's weights cast to "
                             "--storage, rebuilt from the recipe on first use (keeps the zoo under 50 MB)")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.set_defaults(handler=command_zoo_export)
    table = zoo_commands.add_parser("table", help="the zoo's training and ranked numbers as a markdown table")
    table.add_argument("--dataset", default="fashion-mnist")
    table.add_argument("--write-readme", action="store_true", help="also write it into README.md")
    table.set_defaults(handler=command_zoo_table)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a baseline defense from its recipe "
                                "(baselines/recipes/<dataset>/<name>.toml)")
    train.add_argument("recipe", help="recipe file, or a path under baselines/recipes/")
    train.add_argument("--out", help="run directory (default: the cache, keyed by the recipe's sha256)")
    add_runtime(train)
    train.set_defaults(handler=command_train)


def add_parsers(commands) -> None:
    _add_zoo(commands)
    _add_train(commands)
