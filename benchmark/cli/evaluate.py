"""`threatbench run` (judge the baseline zoo) and `threatbench evaluate` (judge one checkpoint)."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import (
    CHECKPOINT_DIR_HELP,
    DEFAULT_BUDGET_HELP,
    NO_CASCADE_HELP,
    SEED_HELP,
    SPEC_FILE_HELP,
    add_common,
    add_numerics,
    add_runtime,
    cascade_options,
    comma_separated,
    default_out,
    numerics,
    pick_device,
    run_budget,
    wrap,
)
from benchmark.cli.report import SUMMARY_HEADERS, flag_notes, format_result, zoo_summary_rows
from benchmark.errors import (
    ArchitectureError,
    DefenseOutputError,
    StatefulDefenseError,
    ThreatbenchError,
    WeightsError,
)
from benchmark.paths import LEADERBOARD_DIR
from benchmark.spec import BUDGETS, load_spec

FAMILIES_DEFAULT = "white_box,transfer,adaptive"
# Failures that belong to one zoo entry (its recipe, weights or behaviour), after which `run` goes on
# with the others; anything else (data, spec, output paths) would fail every entry alike and stops it.
ENTRY_ERRORS = (ArchitectureError, DefenseOutputError, StatefulDefenseError, WeightsError)


def zoo_entry_errors() -> tuple[type[Exception], ...]:
    """What loading one zoo entry can raise (its weights, recipe or zoo line): `run` and `sweep` report
    it and go on with the other entries. baselines is imported here, lazily, as everywhere in the CLI."""
    from baselines.recipes import RecipeError
    from baselines.zoo import ZooError

    return (*ENTRY_ERRORS, RecipeError, ZooError)


def command_evaluate(args) -> int:
    from benchmark.evaluation.entry import EntryInfo
    from benchmark.evaluation.loop import evaluate
    from benchmark.models.defense import file_sha256, load
    from benchmark.runtime.distributed import is_main_process

    spec = load_spec(args.spec)
    dataset = spec.dataset(args.dataset)
    device = pick_device(args.device)
    defense = load(args.arch, args.weights, num_classes=dataset.num_classes, sha256=args.sha256,
                   randomized=args.randomized, in_channels=dataset.input_shape[0], device=device,
                   name=args.name or args.arch)
    entry = EntryInfo(name=args.name or args.arch, architecture=args.arch,
                      weights={"file": Path(args.weights).name, "sha256": file_sha256(args.weights)})
    budget, reason = run_budget(args, device)
    out = args.out or default_out(args.dataset, entry.name, budget)
    if is_main_process():
        print(f"judging {entry.name} on {args.dataset}, budget {budget} ({reason}) -> {out}")
    result = evaluate(defense, args.dataset, budget=budget, seed=args.seed, out=out, device=device,
                      batch_size=args.batch_size, data_dir=args.data_dir, entry=entry, spec=spec,
                      progress=not args.no_progress, families=tuple(comma_separated(args.families)),
                      **numerics(args), **cascade_options(args))
    if is_main_process():
        print(format_result(result))
        print(f"\nrecord written to {out} ({result.record['provenance']['processes']} process(es))")
    return 0


def expected_duration(dataset: str, names: list[str], budget: str) -> str:
    """How long these entries took when their committed records were measured, as a guide."""
    from benchmark.evaluation.results import RecordError, read_record

    took, devices, missing, total = [], set(), [], 0.0
    for name in names:
        path = LEADERBOARD_DIR / "results" / dataset / f"{name}-{budget}.json"
        try:
            record = read_record(path)
            seconds = float(record["provenance"]["total_seconds"])
        except (RecordError, KeyError, TypeError, ValueError):
            missing.append(name)
            continue
        took.append(f"{name} {seconds / 60:.0f} min")
        total += seconds
        devices.add(f"{record['provenance'].get('processes', 1)} x {record['provenance'].get('device_name', '?')}")
    if not took:
        return f"(no committed {budget} record of these entries to say how long they take)"
    text = (f"committed {budget} records of these entries took {total / 3600:.1f} h of wall time in all on "
            f"{', '.join(sorted(devices))} ({'; '.join(took)})")
    return text + (f"; no record yet for {', '.join(missing)}" if missing else "")


def _zoo_entry_info(entry):
    from benchmark.evaluation.entry import EntryInfo

    smoothing = None if entry.smoothing is None else {
        "samples": entry.smoothing.samples, "sigma": entry.smoothing.sigma, "vote": entry.smoothing.vote}
    return EntryInfo(name=entry.name, kind="baseline", architecture=entry.architecture,
                     weights={"file": entry.weights_file, "sha256": entry.sha256},
                     paper=entry.paper or None, smoothing=smoothing,
                     recipe={"file": entry.recipe, "sha256": entry.recipe_sha256, "epoch": entry.epoch})


def command_run(args) -> int:
    from tabulate import tabulate

    from baselines.zoo import check_recipe, entry_defense, load_zoo
    from benchmark.evaluation.loop import evaluate
    from benchmark.runtime.distributed import is_main_process

    spec = load_spec()
    say = print if is_main_process() else (lambda *_: None)
    device = pick_device(args.device)
    budget, reason = run_budget(args, device)
    zoo = load_zoo(args.dataset)
    names = [n.strip() for n in args.entries.split(",")] if args.entries else zoo.names()
    entries = [zoo.entry(name) for name in names]
    dataset = spec.dataset(zoo.dataset)
    say(wrap(f"threatbench run: {len(entries)} zoo entries of {zoo.path.name} on {zoo.dataset}, "
             f"budget {budget} ({reason}); finished measurements are kept, so a rerun resumes"))
    say(wrap(expected_duration(zoo.dataset, [entry.name for entry in entries], budget)))
    records, not_judged = [], []
    for entry in entries:
        out = default_out(zoo.dataset, entry.name, budget, Path(args.out_dir))
        say(f"\n== {entry.name} ({entry.architecture}{', smoothed' if entry.smoothing else ''}) -> {out}")
        try:
            check_recipe(entry)
            defense = entry_defense(entry, dataset.num_classes, in_channels=dataset.input_shape[0],
                                    device=device, progress=not args.no_progress)
            result = evaluate(defense, zoo.dataset, budget=budget, seed=args.seed, out=out, device=device,
                              data_dir=args.data_dir, entry=_zoo_entry_info(entry), spec=spec,
                              progress=not args.no_progress, families=tuple(comma_separated(args.families)),
                              **numerics(args), **cascade_options(args))
        except zoo_entry_errors() as error:   # one entry's weights or recipe: judge the others, report at the end
            say(f"not judged: {error}")
            not_judged.append((entry.name, str(error)))
            continue
        say(format_result(result))
        records.append(result.record)
    if records:
        say(wrap(f"\nthe {zoo.dataset} zoo, budget {budget} (accuracy %; worst = per example over the family; "
                 "NAttack: the survivors of the others it broke, median queries):"))
        say(tabulate(zoo_summary_rows(records), tablefmt="github", headers=SUMMARY_HEADERS))
        for line in flag_notes(records):
            say(line)
    if not_judged:
        raise ThreatbenchError(f"{len(not_judged)} of {len(entries)} entries not judged (the others' records "
                               "are written): " + "; ".join(f"{name}: {why}" for name, why in not_judged))
    return 0


# ---------------------------------------------------------------- parsers


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="judge the baseline zoo (default: Fashion-MNIST) and print "
                              "the table")
    run.add_argument("--dataset", default="fashion-mnist", help="whose zoo (baselines/zoo/<dataset>.toml)")
    run.add_argument("--entries", help="comma-separated zoo entries (default: all)")
    run.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    run.add_argument("--families", default=FAMILIES_DEFAULT,
                     help="comma-separated subset of white_box,transfer,adaptive")
    run.add_argument("--no-cascade", action="store_true", help=NO_CASCADE_HELP)
    run.add_argument("--checkpoint-dir", help=CHECKPOINT_DIR_HELP)
    run.add_argument("--out-dir", default="threatbench-results",
                     help="records go to <out-dir>/<dataset>/<entry>-<budget>.json")
    run.add_argument("--seed", type=int, help=SEED_HELP)
    add_runtime(run)
    add_numerics(run)
    run.set_defaults(handler=command_run)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="judge a checkpoint under the spec")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--arch", required=True, help="mnist_a..mnist_d, resnet20, wrn34_10, timm:<name> "
                          "(threatbench list architectures)")
    evaluate.add_argument("--weights", required=True, help="a .safetensors file")
    evaluate.add_argument("--sha256", help="expected sha256 of the weights file")
    evaluate.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    evaluate.add_argument("--batch-size", type=int)
    evaluate.add_argument("--name", help="entry name in the record (default: the architecture)")
    evaluate.add_argument("--randomized", action="store_true", help="declare the defense randomized")
    evaluate.add_argument("--spec", help=SPEC_FILE_HELP)
    evaluate.add_argument("--families", default=FAMILIES_DEFAULT,
                          help="comma-separated subset of white_box,transfer,adaptive (a record that "
                               "lacks a family has no overall worst case and is never ranked)")
    evaluate.add_argument("--no-cascade", action="store_true", help=NO_CASCADE_HELP)
    evaluate.add_argument("--checkpoint-dir", help=CHECKPOINT_DIR_HELP)
    add_common(evaluate)
    add_numerics(evaluate)
    evaluate.set_defaults(handler=command_evaluate)


def add_parsers(commands) -> None:
    _add_run(commands)
    _add_evaluate(commands)
