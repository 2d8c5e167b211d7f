"""`threatbench submission validate | fetch | check | evaluate`: a Hub submission
(submissions/<name>.yaml) from its manifest to its record."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import (
    DEFAULT_BUDGET_HELP,
    SEED_HELP,
    SPEC_FILE_HELP,
    Parser,
    add_numerics,
    add_runtime,
    default_out,
    numerics,
    percent,
    pick_device,
    run_budget,
)
from benchmark.cli.report import format_result
from benchmark.spec import BUDGETS, Spec, load_spec


def _manifest(path: str, spec: Spec | None = None):
    from benchmark.intake.manifest import load_manifest

    return load_manifest(path, spec)


def _fetch(manifest, args):
    from benchmark.intake.hub import fetch, store_dir

    files = fetch(manifest, max_bytes=int(args.max_mb * 1e6), offline=args.offline)
    got = ", ".join(files.downloaded) if files.downloaded else "nothing (all files already in the store)"
    print(f"{manifest.name}: {manifest.model.repo}@{manifest.model.revision}: downloaded {got}; "
          f"sha256 checked; store {store_dir(manifest.model)}")
    return files


def command_submission_validate(args) -> int:
    spec = load_spec(args.spec)
    for path in args.manifests:
        manifest = _manifest(path, spec)
        model = manifest.model
        print(f"{path}: valid ({manifest.dataset}, {model.repo}@{model.revision[:12]}, "
              f"{model.architecture}, {model.weights} sha256 {model.sha256[:12]}..., "
              f"{'randomized' if model.randomized else 'deterministic'}"
              f"{', smoothed' if model.smoothing else ''})")
    return 0


def command_submission_fetch(args) -> int:
    _fetch(_manifest(args.manifest), args)
    return 0


def command_submission_check(args) -> int:
    from benchmark.intake.submission import smoke_check, submission_defense

    spec = load_spec(args.spec)
    manifest = _manifest(args.manifest, spec)
    dataset = spec.dataset(manifest.dataset)
    device = pick_device(args.device)
    defense, _ = submission_defense(manifest, _fetch(manifest, args), dataset, device)
    report = smoke_check(defense, dataset, n=args.n, data_dir=args.data_dir, device=device)
    print(f"{manifest.name}: loads as {defense.name}, output shape and values checked")
    if report.missing_data:
        print(f"clean accuracy not measured: {report.missing_data}")
        return 0
    low, high = report.interval
    print(f"clean accuracy on the first {report.n} {dataset.name} test images: "
          f"{percent(report.accuracy)}% [{100 * low:.1f}, {100 * high:.1f}]")
    claimed = manifest.claimed.get("clean")
    if claimed is not None and not 100 * low <= claimed <= 100 * high:
        print(f"warning: the manifest claims {claimed:g}% clean, outside this interval; check "
              "model.preprocessing and the weights")
    return 0


def command_submission_evaluate(args) -> int:
    from benchmark.evaluation.loop import evaluate
    from benchmark.intake.submission import submission_defense
    from benchmark.runtime.distributed import is_main_process

    spec = load_spec(args.spec)
    manifest = _manifest(args.manifest, spec)
    device = pick_device(args.device)
    budget, reason = run_budget(args, device)
    defense, entry = submission_defense(manifest, _fetch(manifest, args), spec.dataset(manifest.dataset),
                                        device)
    out = default_out(manifest.dataset, manifest.name, budget, Path(args.out_dir))
    print(f"judging {manifest.name} on {manifest.dataset}, budget {budget} ({reason}) -> {out}")
    result = evaluate(defense, manifest.dataset, budget=budget, seed=args.seed, out=out, device=device,
                      data_dir=args.data_dir, entry=entry, spec=spec, progress=not args.no_progress,
                      **numerics(args))
    if not is_main_process():
        return 0
    print(format_result(result))
    print(f"\nrecord written to {out}; regenerate the pages with `threatbench leaderboard`")
    return 0


# ---------------------------------------------------------------- parsers

STEPS = (
    ("fetch", command_submission_fetch, "download the pinned files into the store, checking sizes and sha256"),
    ("check", command_submission_check, "CPU smoke check: load, output shape, clean accuracy on a small subset"),
    ("evaluate", command_submission_evaluate, "judge the submission under the full threat model and write "
     "its record"),
)


def _add_step(commands, name: str, handler, text: str) -> None:
    """fetch, check or evaluate one manifest; check and evaluate also load the spec and run."""
    command = commands.add_parser(name, help=text)
    command.add_argument("manifest", help="submissions/<name>.yaml")
    command.add_argument("--max-mb", type=float, default=4000, help="largest file accepted (MB)")
    command.add_argument("--offline", action="store_true", help="use only the store; no network")
    command.set_defaults(handler=handler)
    if name == "fetch":
        return
    command.add_argument("--spec", help=SPEC_FILE_HELP)
    add_runtime(command)
    if name == "check":
        command.add_argument("--n", type=int, default=200, help="test images for clean accuracy")
        return
    command.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    command.add_argument("--out-dir", default="threatbench-results",
                         help="the record goes to <out-dir>/<dataset>/<name>-<budget>.json "
                              "(leaderboard/results for the leaderboard)")
    command.add_argument("--seed", type=int, help=SEED_HELP)
    add_numerics(command)


def add_parsers(commands) -> None:
    submission = commands.add_parser("submission", help="validate, fetch, check and judge a Hub "
                                     "submission (submissions/<name>.yaml)")
    submission_commands = submission.add_subparsers(dest="submission_command", required=True,
                                                    parser_class=Parser)
    validate = submission_commands.add_parser("validate", help="check manifests offline")
    validate.add_argument("manifests", nargs="+", help="submissions/<name>.yaml files")
    validate.add_argument("--spec", help=SPEC_FILE_HELP)
    validate.set_defaults(handler=command_submission_validate)
    for name, handler, text in STEPS:
        _add_step(submission_commands, name, handler, text)
