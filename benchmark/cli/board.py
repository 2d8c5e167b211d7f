"""The leaderboard's pages: `leaderboard`, `compare`, `cite`, `sweep` and `reproduce`."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import add_runtime, comma_separated, pick_device
from benchmark.errors import ThreatbenchError
from benchmark.paths import LEADERBOARD_DIR
from benchmark.spec import BUDGETS, load_spec


def command_leaderboard(args) -> int:
    from benchmark.board.leaderboard import stale_pages, write_pages

    out_dir = Path(args.dir) if args.dir else LEADERBOARD_DIR
    version = load_spec().version
    if args.check:
        from benchmark.tools.regression import check_committed_evidence

        for line in check_committed_evidence(out_dir / "results", version):   # true records first
            print(line)
        stale = stale_pages(out_dir, version)
        if stale:
            raise ThreatbenchError(f"stale leaderboard pages in {out_dir}: {', '.join(stale)}; run "
                                   "threatbench leaderboard and commit the result")
        print(f"the leaderboard pages in {out_dir} are up to date and every record is true to its evidence")
        return 0
    for path in write_pages(out_dir, version):
        print(f"wrote {path}")
    return 0


def command_compare(args) -> int:
    from benchmark.board.compare import load_compared, render, resolve_against

    if not args.records:
        raise ThreatbenchError("give at least one record (a threatbench result .json)")
    records = [load_compared(path) for path in args.records]
    if args.against:
        against = [name for text in args.against for name in comma_separated(text)]
        results = Path(args.results_dir) if args.results_dir else LEADERBOARD_DIR / "results"
        records += [load_compared(path) for path in resolve_against(records[0], against, results)]
    if len(records) < 2:
        raise ThreatbenchError("nothing to compare with: give two records, or --against zoo or entry names")
    print(render(records))
    return 0


def command_cite(args) -> int:
    from benchmark.board.citing import _as_cited, cite_benchmark, cite_row
    from benchmark.evaluation.record_check import load_record

    entries = [cite_row(load_record(path), _as_cited(Path(path))) for path in args.records]
    print("\n".join(entries or [cite_benchmark()]), end="")
    return 0


def _sweep_eps_values(text: str) -> list[float]:
    try:
        eps_values = sorted({float(value) for value in text.split(",")})
    except ValueError:
        raise ThreatbenchError(f"--eps must be comma-separated numbers, got {text!r}") from None
    if any(not 0.0 <= eps <= 1.0 for eps in eps_values):
        raise ThreatbenchError(f"every --eps value must lie in [0, 1], got {text!r}")
    return eps_values


def command_sweep(args) -> int:
    from baselines.zoo import entry_defense, load_zoo
    from benchmark.board.leaderboard import write_pages
    from benchmark.board.sweeps import eps_sweep
    from benchmark.cli.evaluate import zoo_entry_errors

    spec = load_spec()
    device = pick_device(args.device)
    zoo = load_zoo(args.dataset)
    dataset = spec.dataset(args.dataset)
    eps_values = _sweep_eps_values(args.eps)
    out_dir = Path(args.out_dir) if args.out_dir else LEADERBOARD_DIR / "sweeps" / args.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.entries.split(",")] if args.entries else zoo.names()
    not_swept = []
    for name in names:
        entry = zoo.entry(name)
        try:
            defense = entry_defense(entry, dataset.num_classes, in_channels=dataset.input_shape[0],
                                    device=device, progress=not args.no_progress)
        except zoo_entry_errors() as error:   # as `run`: sweep the others, report at the end
            print(f"{name}: not swept: {error}")
            not_swept.append(name)
            continue
        record = eps_sweep(defense, dataset=args.dataset, spec=spec, eps_values=eps_values, n=args.n,
                           out=out_dir / f"{name}.json", data_dir=args.data_dir, device=device,
                           progress=not args.no_progress,
                           entry={"name": name, "architecture": entry.architecture,
                                  "weights": {"file": entry.weights_file, "sha256": entry.sha256}})
        print(name + ": " + ", ".join(f"eps {p['eps']:g}: {100 * p['accuracy']:.1f}%" for p in record["points"]))
    if not args.out_dir:
        write_pages(LEADERBOARD_DIR, spec.version)
        print(f"plot and page updated in {LEADERBOARD_DIR}")
    if not_swept:
        raise ThreatbenchError(f"{len(not_swept)} of {len(names)} entries not swept (the others' curves are "
                               f"written): {', '.join(not_swept)}; see the lines above")
    return 0


def command_reproduce(args) -> int:
    from baselines.reproduction import evaluate_plan, write_page

    budget = args.budget
    if args.evaluate:
        device = pick_device(args.device)
        only = [n.strip() for n in args.only.split(",")] if args.only else None
        evaluate_plan(args.dataset, budget=budget, device=device, data_dir=args.data_dir,
                      progress=not args.no_progress, only=only)
    path = write_page(args.dataset, budget)
    print(f"reproduction page written to {path}")
    return 0


# ---------------------------------------------------------------- parsers


def _add_compare_and_cite(commands) -> None:
    compare = commands.add_parser(
        "compare", help="records side by side per family, with a paired exact test on the same examples")
    compare.add_argument("records", nargs="*", help="result records (.json, their .examples.json beside them)")
    compare.add_argument("--against", nargs="+", metavar="zoo|ENTRY",
                         help="also the committed records of these entries (or every baseline: zoo) at the first "
                              "record's dataset and budget")
    compare.add_argument("--results-dir", help="where --against looks (default: the repository's leaderboard/results)")
    compare.set_defaults(handler=command_compare)

    cite = commands.add_parser("cite", help="BibTeX for ranked records (README.md, How to cite), or for threatbench")
    cite.add_argument("records", nargs="*", help="result records (.json); none: the benchmark itself")
    cite.set_defaults(handler=command_cite)


def _add_pages(commands) -> None:
    reproduce = commands.add_parser("reproduce", help="check the papers' claims on our baselines and "
                                    "write leaderboard/reproductions/<dataset>.md")
    reproduce.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist"])
    reproduce.add_argument("--budget", choices=list(BUDGETS), default="standard",
                           help="the claims are judged on records of this budget (default: the ranked "
                                "standard, whose records the leaderboard shares)")
    reproduce.add_argument("--evaluate", action="store_true",
                           help="measure what has no record yet (else only render the page)")
    reproduce.add_argument("--only", help="comma-separated planned models, smoothing sweeps (<model>-smoothing) "
                           "or eps probes (probe-<claim>-<model>) to measure")
    add_runtime(reproduce)
    reproduce.set_defaults(handler=command_reproduce)

    board = commands.add_parser("leaderboard", help="regenerate leaderboard/*.md from leaderboard/results")
    board.add_argument("--check", action="store_true",
                       help="verify every record against its per-example file and the spec, re-predict the "
                            "clean bits of current records, and report stale pages (exit 2 on any problem)")
    board.add_argument("--dir", help="leaderboard directory (default: the repository's leaderboard/)")
    board.set_defaults(handler=command_leaderboard)

    sweep = commands.add_parser("sweep", help="PGD accuracy vs eps for zoo entries; plot on the leaderboard page")
    sweep.add_argument("--dataset", default="fashion-mnist")
    sweep.add_argument("--entries", help="comma-separated zoo entries (default: all)")
    sweep.add_argument("--eps", default="0,0.025,0.05,0.075,0.1,0.15,0.2", help="comma-separated eps values")
    sweep.add_argument("--n", type=int, default=200, help="images (the first n of the evaluation subset)")
    sweep.add_argument("--out-dir", help="where the curves go (default: leaderboard/sweeps/<dataset>)")
    add_runtime(sweep)
    sweep.set_defaults(handler=command_sweep)


def add_parsers(commands) -> None:
    _add_compare_and_cite(commands)
    _add_pages(commands)
