"""`threatbench run | evaluate | submission | leaderboard | spec | perf | ...`.

A user mistake prints one line (`threatbench: error: ...`) and exits with 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import ThreatbenchError
from benchmark.runtime.kernel_tuning import MEMORY_FORMATS
from benchmark.spec import BUDGETS, WHITE_BOX_ATTACKS, Spec, load_spec

if TYPE_CHECKING:   # the CLI imports torch only when a command needs it: `--help` stays fast
    import torch

EXIT_USER_ERROR = 2
SUMMARY_HEADERS = ["entry", "clean", "white-box", "transfer", "NAttack broke", "all", "flags"]
TERMINAL_WIDTH = 100   # what every table and line `run` / `evaluate` print fits in (tests/test_cli.py)
DEFAULT_BUDGET_HELP = ("default (every command that measures): full on a GPU, quick on a CPU (a smoke test, "
                       "never ranked); standard gives ranked numbers on a CPU")
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # one line, not usage + message
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def wrap(text: str) -> str:
    """A line of prose folded to TERMINAL_WIDTH, continuation lines indented."""
    import textwrap

    return "\n".join(textwrap.fill(line, TERMINAL_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
                     for line in text.split("\n"))


def _pick_device(requested: str | None) -> torch.device:
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise ThreatbenchError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


# ---------------------------------------------------------------- printing


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _result_rows(result) -> list[list[str]]:
    rows = []
    for row in result.rows():
        queries = row["median_queries"]
        if row["accuracy"] is None:   # the cascade left NAttack no survivor to attack
            accuracy, interval = "-", f"no survivor of {row['cascade']['subsample']}"
        else:
            low, high = row["interval"]
            accuracy, interval = _percent(row["accuracy"]), f"[{100 * low:.1f}, {100 * high:.1f}]"
        rows.append([row["measurement"], row["family"], row["n"], accuracy, interval,
                     "" if queries is None else f"{queries:g}",
                     "" if row["seconds"] is None else f"{row['seconds']:.1f}"])
    return rows


def format_result(result) -> str:
    from tabulate import tabulate

    from benchmark.board.leaderboard import ranked_budgets
    from benchmark.evaluation.cascade import describe_cascade
    record = result.record
    table = tabulate(_result_rows(result), tablefmt="github",
                     headers=["measurement", "family", "n", "acc. %", "95% CI", "median queries", "s"])
    randomness = record["randomness"]
    lines = [
        f"{record['entry']['name']} on {record['dataset']}: eps {record['threat_model']['eps']:g} "
        f"(L-inf), budget {record['budget']} (n = {record['n']}, NAttack on {record['nattack_n']}), "
        f"seed {record['seed']}, spec v{record['spec']['version']}",
    ]
    if randomness["attacked_as_randomized"]:
        lines.append(f"randomized defense (declared: {randomness['declared']}, detected: "
                     f"{randomness['detected']}): EOT gradients, accuracy = mean of "
                     f"{randomness['prediction_repeats']} predictions")
    lines = [wrap(line) for line in lines] + ["", table, ""]
    for name, diagnostic in record.get("diagnostics", {}).items():
        lines.append(f"diagnostic {name} (eps {diagnostic['params'].get('eps', '?')}, n = "
                     f"{diagnostic['n']}): accuracy {_percent(diagnostic['accuracy'])}%")
    if record.get("cascade"):
        lines.append("cascade: " + describe_cascade(record["cascade"]))
    for family, status in record["families"].items():
        if status["status"] != "run":
            lines.append(f"{family} family not run: {status['reason']}")
    if record["worst_case"]["all"] is None:
        lines.append("worst case over all families: not available (a family was not run); "
                     "this record cannot be ranked")
    costs = record.get("costs")
    if costs:
        families = ", ".join(f"{f} {v:.1f}" for f, v in costs["seconds_by_family"].items())
        lines.append(f"cost: {costs['seconds']:.1f} s of compute ({families}), {costs['forward_passes']:,} "
                     f"forward and {costs['backward_passes']:,} backward passes, {costs['queries']:,} NAttack "
                     f"queries; {costs['wall_seconds']:.1f} s wall on {costs['processes']} x "
                     f"{costs['device_name']}, {costs['precision']}")
    raised = [name for name, flag in record["flags"].items() if flag["raised"]]
    lines.append("gradient-masking flags: " + (", ".join(raised) if raised else "none raised"))
    for name in raised:
        lines.append(f"  ! {name}: {record['flags'][name]['evidence']}")
    ranked = ranked_budgets(record["dataset"])   # of the current spec
    if record["budget"] not in ranked:
        lines.append(f"note: the {record['budget']} budget is not ranked; the leaderboard ranks the "
                     f"{' and '.join(ranked) or 'no'} budget{'s' if len(ranked) > 1 else ''}")
    return "\n".join(line if line.startswith("|") else wrap(line) for line in lines)


def _describe_source(source) -> str:
    if source.sha256:
        return f"{source.name} = {source.architecture} ({source.weights}, sha256 {source.sha256[:12]}...)"
    if source.hub:
        return f"{source.name} = {source.architecture} (Hub {source.hub.repo}@{source.hub.revision[:12]}, sha256 not pinned)"
    return f"{source.name} = {source.architecture} (weights not pinned yet)"


def format_spec(spec: Spec, dataset: str | None = None) -> str:
    from tabulate import tabulate
    names = [dataset] if dataset else list(spec.datasets)
    blocks = [f"threat-model spec v{spec.version} ({spec.schema}), sha256 {spec.sha256}",
              f"norm {spec.norm}, pixels in [0, 1], default seed {spec.seed}, "
              f"{100 * spec.confidence:g}% Wilson intervals",
              f"randomized defenses: EOT on every gradient, accuracy = mean of "
              f"{spec.randomized.prediction_repeats} predictions"
              + (f", fixed batches of {spec.randomized.batch_size} (NAttack {spec.randomized.nattack_batch_size})"
                 if spec.randomized.batch_size else "") + "; masking check: PGD at eps "
              f"{spec.diagnostics.unbounded_pgd_eps:g} on {spec.diagnostics.unbounded_pgd_examples} examples"]
    for name in names:
        d = spec.dataset(name)
        blocks.append(f"\n## {name}: eps {d.eps:g}, {d.num_classes} classes, input {list(d.input_shape)}")
        blocks.append(tabulate([
            ["architectures", ", ".join(d.architectures)],
            ["trained architecture", d.trained_architecture],
            ["static models (ens-adv)", ", ".join(d.static_models) or "-"],
            ["held-out sources", "; ".join(_describe_source(h) for h in d.held_out_sources) or "-"],
            *([["preprocessing", str(d.preprocessing.as_dict())]] if d.preprocessing else []),
        ], tablefmt="github", headers=["models", ""]))
        blocks.append(tabulate(
            [[a, p.label, p.alpha, p.steps, p.step_size, p.random_start, p.draws]
             for a, p in d.attacks.items()],
            headers=["white-box attack", "label", "alpha", "steps", "step size", "random start", "draws"],
            tablefmt="github", missingval="-"))
        n = d.nattack
        blocks.append(tabulate([[n.population, n.sigma, n.learning_rate, n.max_iterations,
                                 n.check_every, list(n.search_shape), n.parameterization, n.score_draws]],
                               headers=["nattack population", "sigma", "lr", "max iterations",
                                        "check every", "search shape", "search space",
                                        "score draws (randomized)"], tablefmt="github"))
        blocks.append(tabulate([[b.name, "yes" if b.ranked else "no", b.n, b.nattack_n,
                                 b.nattack_max_iterations or n.max_iterations,
                                 "-" if b.smoothed_n is None else f"{b.smoothed_n} ({b.smoothed_nattack_n})"]
                                for b in d.budgets.values()],
                               headers=["budget", "ranked", "n", "nattack subsample", "nattack iterations",
                                        "smoothed entries: n (subsample)"],
                               tablefmt="github"))
    cascade = ("NAttack attacks only the examples that survived clean, white-box and transfer (the cascade)"
               if spec.adaptive.cascade else "NAttack attacks every example of its subsample")
    subsample = ("a seeded, uniformly random subsample" if spec.adaptive.subsample == "uniform"
                 else "the first examples")
    blocks.append(f"\nadaptive family: {cascade}, on {subsample} of the n; the ranking key is "
                  + ("estimated as p * q (docs/ranking.md)" if spec.adaptive.subsample == "uniform"
                     else "the worst case on that subsample"))
    return "\n".join(blocks)


# ---------------------------------------------------------------- commands


def _default_out(dataset: str, entry_name: str, budget: str,
                 root: Path = Path("threatbench-results")) -> Path:
    """<root>/<dataset>/<entry>-<budget>.json (the directory is created)."""
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry_name)
    out = root / dataset / f"{safe_name}-{budget}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def command_spec(args) -> int:
    print(format_spec(load_spec(args.spec), args.dataset))
    return 0


def command_evaluate(args) -> int:
    from benchmark.evaluation.loop import EntryInfo, evaluate
    from benchmark.models.defense import file_sha256, load
    from benchmark.runtime.distributed import is_main_process

    spec = load_spec(args.spec)
    dataset = spec.dataset(args.dataset)
    device = _pick_device(args.device)
    defense = load(args.arch, args.weights, num_classes=dataset.num_classes, sha256=args.sha256,
                   randomized=args.randomized, in_channels=dataset.input_shape[0], device=device,
                   name=args.name or args.arch)
    entry = EntryInfo(name=args.name or args.arch, architecture=args.arch,
                      weights={"file": Path(args.weights).name, "sha256": file_sha256(args.weights)})
    budget, reason = _run_budget(args, device)
    out = args.out or _default_out(args.dataset, entry.name, budget)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    if is_main_process():
        print(f"judging {entry.name} on {args.dataset}, budget {budget} ({reason}) -> {out}")
    result = evaluate(defense, args.dataset, budget=budget, seed=args.seed, out=out, device=device,
                      batch_size=args.batch_size, data_dir=args.data_dir, entry=entry, spec=spec,
                      progress=not args.no_progress, families=families, **_numerics(args),
                      **_cascade(args))
    if is_main_process():
        print(format_result(result))
        print(f"\nrecord written to {out} ({result.record['provenance']['processes']} process(es))")
    return 0


def _run_budget(args, device: torch.device) -> tuple[str, str]:
    """The one rule for every command that measures (run, evaluate, submission evaluate,
    transfer-matrix): --budget if given, else `full` on a GPU and `quick` (a smoke test) on a CPU."""
    if args.budget:
        return args.budget, "--budget"
    if device.type == "cuda":
        return "full", "a GPU is available"
    return "quick", ("no GPU found: a smoke test, never ranked; --budget standard gives ranked numbers on a "
                     "CPU (hours for the robust entries)")


def expected_duration(dataset: str, names: list[str], budget: str) -> str:
    """How long these entries took when their committed records were measured, as a guide."""
    from benchmark.board.leaderboard import LEADERBOARD_DIR
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


def _cascade(args) -> dict[str, Any]:
    """--no-cascade: NAttack on its whole subsample (a diagnostic; the record says so);
    --checkpoint-dir: where the resumable checkpoint goes."""
    options: dict[str, Any] = {"cascade": False} if getattr(args, "no_cascade", False) else {}
    if getattr(args, "checkpoint_dir", None):
        options["checkpoint_dir"] = Path(args.checkpoint_dir)
    return options


def _zoo_entry_info(entry):
    from benchmark.evaluation.loop import EntryInfo

    smoothing = None if entry.smoothing is None else {
        "samples": entry.smoothing.samples, "sigma": entry.smoothing.sigma, "vote": entry.smoothing.vote}
    return EntryInfo(name=entry.name, kind="baseline", architecture=entry.architecture,
                     weights={"file": entry.weights_file, "sha256": entry.sha256},
                     paper=entry.paper or None, smoothing=smoothing,
                     recipe={"file": entry.recipe, "sha256": entry.recipe_sha256, "epoch": entry.epoch})


def _worst(record, family: str) -> str:
    worst = record["worst_case"].get(family)
    return "n/a" if not worst else _percent(worst["accuracy"])


def _raised_flags(record) -> str:
    return ", ".join(sorted(n for n, flag in record["flags"].items() if flag.get("raised") is True)) or "-"


def _nattack_broke(record: dict) -> str:
    """NAttack in a narrow cell: "k of m" survivors broken (median queries); else the page's cell."""
    nattack = record["attacks"].get("nattack") or {}
    cascade, queries = nattack.get("cascade"), nattack.get("queries", {}).get("median")
    if cascade is None or not nattack["params"].get("cascade"):
        from benchmark.evaluation.cascade import adaptive_cell

        return adaptive_cell(record)
    return f"{cascade['broken']} of {cascade['survivors']}" + ("" if queries is None else f" ({queries:g} q)")


def zoo_summary_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for record in records:
        rows.append([record["entry"]["name"], _percent(record["clean"]["accuracy"]),
                     _worst(record, "white_box"), _worst(record, "transfer"), _nattack_broke(record),
                     _worst(record, "all"), _raised_flags(record)])
    return rows


def command_run(args) -> int:
    from tabulate import tabulate

    from baselines.zoo import check_recipe, entry_defense, load_zoo
    from benchmark.evaluation.loop import evaluate
    from benchmark.runtime.distributed import is_main_process

    spec = load_spec()
    say = print if is_main_process() else (lambda *_: None)
    device = _pick_device(args.device)
    budget, reason = _run_budget(args, device)
    zoo = load_zoo(args.dataset)
    names = [n.strip() for n in args.entries.split(",")] if args.entries else zoo.names()
    entries = [zoo.entry(name) for name in names]
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    dataset = spec.dataset(zoo.dataset)
    say(wrap(f"threatbench run: {len(entries)} zoo entries of {zoo.path.name} on {zoo.dataset}, "
             f"budget {budget} ({reason}); finished measurements are kept, so a rerun resumes"))
    say(wrap(expected_duration(zoo.dataset, [entry.name for entry in entries], budget)))
    records = []
    for entry in entries:
        check_recipe(entry)
        defense = entry_defense(entry, dataset.num_classes, in_channels=dataset.input_shape[0],
                                device=device)
        out = _default_out(zoo.dataset, entry.name, budget, Path(args.out_dir))
        say(f"\n== {entry.name} ({entry.architecture}{', smoothed' if entry.smoothing else ''}) -> {out}")
        result = evaluate(defense, zoo.dataset, budget=budget, seed=args.seed, out=out, device=device,
                          data_dir=args.data_dir, entry=_zoo_entry_info(entry), spec=spec,
                          progress=not args.no_progress, families=families, **_numerics(args),
                          **_cascade(args))
        say(format_result(result))
        records.append(result.record)
    say(wrap(f"\nthe {zoo.dataset} zoo, budget {budget} (accuracy %; worst = per example over the family; "
             "NAttack: the survivors of the others it broke, median queries):"))
    say(tabulate(zoo_summary_rows(records), tablefmt="github", headers=SUMMARY_HEADERS))
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


def command_compare(args) -> int:
    from benchmark.board.compare import load_compared, render, resolve_against
    from benchmark.board.leaderboard import LEADERBOARD_DIR

    if not args.records:
        raise ThreatbenchError("give at least one record (a threatbench result .json)")
    records = [load_compared(path) for path in args.records]
    if args.against:
        against = [name.strip() for text in args.against for name in text.split(",") if name.strip()]
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


def command_zoo_table(args) -> int:
    from baselines.zoo_table import write_readme_table, zoo_table

    print(zoo_table(args.dataset))
    if args.write_readme:
        write_readme_table()
        print("README.md: zoo table written")
    return 0


def command_train(args) -> int:
    # The CLI is the front-end, not the judge: only these commands reach into baselines/.
    from baselines.recipes import load_recipe
    from baselines.train import train_recipe

    device = _pick_device(args.device)
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


def command_reproduce(args) -> int:
    from baselines.reproduction import evaluate_plan, write_page

    budget = args.budget
    if args.evaluate:
        device = _pick_device(args.device)
        only = [n.strip() for n in args.only.split(",")] if args.only else None
        evaluate_plan(args.dataset, budget=budget, device=device, data_dir=args.data_dir,
                      progress=not args.no_progress, only=only)
    path = write_page(args.dataset, budget)
    print(f"reproduction page written to {path}")
    return 0


def command_leaderboard(args) -> int:
    from benchmark.board.leaderboard import LEADERBOARD_DIR, stale_pages, write_pages

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


def command_sweep(args) -> int:
    from baselines.zoo import entry_defense, load_zoo
    from benchmark.board.leaderboard import LEADERBOARD_DIR, write_pages
    from benchmark.board.sweeps import eps_sweep

    spec = load_spec()
    device = _pick_device(args.device)
    zoo = load_zoo(args.dataset)
    dataset = spec.dataset(args.dataset)
    try:
        eps_values = sorted({float(value) for value in args.eps.split(",")})
    except ValueError:
        raise ThreatbenchError(f"--eps must be comma-separated numbers, got {args.eps!r}") from None
    if any(not 0.0 <= eps <= 1.0 for eps in eps_values):
        raise ThreatbenchError(f"every --eps value must lie in [0, 1], got {args.eps!r}")
    out_dir = Path(args.out_dir) if args.out_dir else LEADERBOARD_DIR / "sweeps" / args.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.entries.split(",")] if args.entries else zoo.names()
    for name in names:
        entry = zoo.entry(name)
        defense = entry_defense(entry, dataset.num_classes, in_channels=dataset.input_shape[0], device=device)
        record = eps_sweep(defense, dataset=args.dataset, spec=spec, eps_values=eps_values, n=args.n,
                           out=out_dir / f"{name}.json", data_dir=args.data_dir, device=device,
                           progress=not args.no_progress,
                           entry={"name": name, "architecture": entry.architecture,
                                  "weights": {"file": entry.weights_file, "sha256": entry.sha256}})
        print(name + ": " + ", ".join(f"eps {p['eps']:g}: {100 * p['accuracy']:.1f}%" for p in record["points"]))
    if not args.out_dir:
        write_pages(LEADERBOARD_DIR, spec.version)
        print(f"plot and page updated in {LEADERBOARD_DIR}")
    return 0


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


def command_transfer_matrix(args) -> int:
    from tabulate import tabulate

    from benchmark.attacks.sources import load_held_out_sources, transfer_cache_dir
    from benchmark.attacks.transfer import (
        TRANSFER_ATTACKS,
        TransferCache,
        TransferSource,
        transfer_matrix,
    )
    from benchmark.data import load_evaluation_set
    from benchmark.evaluation.loop import default_batch_size
    from benchmark.models.defense import file_sha256, load

    spec = load_spec()
    dataset = spec.dataset(args.dataset)
    device = _pick_device(args.device)
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
    name, reason = _run_budget(args, device)
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


def _perf_model(num_classes: int, device: torch.device):
    """Model A of the committed zoo: trained weights, so that NAttack's queries are those of a real run."""
    from baselines.zoo import entry_defense, load_zoo

    entry = load_zoo("fashion-mnist").entry("A")
    defense = entry_defense(entry, num_classes, device=device)
    return defense, {"dataset": "fashion-mnist", "entry": entry.name, "architecture": entry.architecture,
                     "sha256": entry.sha256}


def command_perf(args) -> int:
    import tempfile
    import time

    import torch
    from tabulate import tabulate

    from benchmark.attacks.sources import load_held_out_sources
    from benchmark.data import load_evaluation_set
    from benchmark.evaluation.results import atomic_write_json, check_output_path
    from benchmark.runtime.kernel_tuning import apply_memory_format, resolve_tuning
    from benchmark.runtime.provenance import collect
    from benchmark.tools.perf import (
        measure_attacks,
        measure_kernel_tunings,
        measure_nattack,
        measure_smoothed_predict,
        measure_transfer_cache,
        perf_report,
    )

    if args.out:
        check_output_path(args.out)   # before minutes of measuring, not after
    started = time.perf_counter()
    spec = load_spec()
    dataset = spec.dataset("fashion-mnist")
    device = _pick_device(args.device)
    defense, model = _perf_model(dataset.num_classes, device)
    eval_set = load_evaluation_set("fashion-mnist", args.batch_size, args.data_dir)
    x = torch.stack([eval_set[i][0] for i in range(args.batch_size)]).to(device)
    y = eval_set.labels[: args.batch_size].to(device)
    print(f"zoo model A (sha256 {model['sha256'][:12]}) on fashion-mnist, batch {args.batch_size}, "
          f"device {device}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats")
    tunings = measure_kernel_tunings(defense, x, y, repeats=args.repeats)
    print("\nkernel options: the floor (one forward + backward w.r.t. the input) under each")
    print(tabulate([[t.tuning.memory_format, "on" if t.tuning.cudnn_autotune else "off",
                     f"{1000 * t.floor_seconds:.2f}", f"{t.speedup_over(tunings[0]):.3f}"] for t in tunings],
                   headers=["memory format", "cudnn autotune", "floor ms", "speed-up"], tablefmt="github"))
    tuning = resolve_tuning(defense, device)
    apply_memory_format(defense, tuning)
    attacks = [a for a in WHITE_BOX_ATTACKS if a != "epgd"]
    floor, rows = measure_attacks(defense, dataset, x, y, attacks, repeats=args.repeats)
    print(f"\nbelow: evaluate's defaults, memory format {tuning.memory_format}, cudnn autotune off")
    print(f"floor (one forward + backward w.r.t. the input): {1000 * floor:.2f} ms\n")
    print(tabulate([[r.attack, r.gradient_steps, f"{1000 * r.seconds_per_step:.2f}",
                     f"{r.ratio_to_floor:.3f}", f"{r.images_per_second:.0f}"] for r in rows],
                   headers=["attack", "gradient steps", "ms / step", "x floor", "images / s"],
                   tablefmt="github"))

    k = max(1, args.nattack_images)
    nattack = measure_nattack(defense, dataset, x[:k], y[:k], iterations=args.nattack_iterations,
                              repeats=max(1, args.repeats // 2))
    print(f"\nnattack: {k} images x population {dataset.nattack.population}, "
          f"{args.nattack_iterations} iterations: {nattack.queries_per_second:.0f} queries/s; floor "
          f"(one batched forward of {k * dataset.nattack.population} images): "
          f"{nattack.floor_images_per_second:.0f} images/s; time per query {nattack.ratio_to_floor:.3f} x floor")

    smoothing = measure_smoothed_predict(defense, x, samples=args.smoothing_samples,
                                         repeats=args.repeats)
    print(f"\nsmoothed predict: {smoothing.images} images x {smoothing.samples} draws: "
          f"{1000 * smoothing.seconds:.2f} ms; floor (one forward of {smoothing.images * smoothing.samples} "
          f"images, no gradient): {1000 * smoothing.floor_seconds:.2f} ms; {smoothing.ratio_to_floor:.3f} x floor")

    sources, reason = load_held_out_sources(dataset, device)
    transfer = None
    if sources:
        source = sources[0]
        with tempfile.TemporaryDirectory() as cache_root:
            transfer = measure_transfer_cache(source, dataset, eval_set, Path(cache_root), device=device,
                                              batch_size=args.batch_size)
        print(f"\ntransfer (pgd crafted on held-out {source.name}, {args.batch_size} images): first target "
              f"{transfer.crafting_seconds:.2f} s (crafting, {transfer.misses} chunk miss); every later "
              f"target {transfer.cached_seconds:.3f} s ({transfer.hits} chunk hit)")
    else:
        print(f"\ntransfer: skipped ({reason})")

    report = perf_report(
        model=model, device=device, batch_size=args.batch_size, repeats=args.repeats, tunings=tunings,
        tuning=tuning, floor_seconds=floor, rows=rows, nattack=nattack,
        nattack_iterations=args.nattack_iterations, smoothing=smoothing, transfer=transfer,
        provenance=collect(device, batch_size=args.batch_size, total_seconds=time.perf_counter() - started,
                           tuning=tuning.as_provenance()))
    _print_goals(report["goals"])
    if args.out:
        atomic_write_json(args.out, report)
        print(f"\nwrote {args.out}")
    return 0


def _print_goals(goals: dict) -> None:
    from tabulate import tabulate
    judged = "judged here" if goals["judged"] else "not judged on this device, shown for comparison"
    print(f"\nspeed goals (set for {goals['device']}; {judged})")
    print(tabulate([[g["measurement"], f"{g['ratio']:.3f}", f"<= {g['at_most']}", "yes" if g["met"] else "no"]
                    for g in goals["goals"]], headers=["measurement", "x floor", "goal", "met"], tablefmt="github"))


def command_precision_check(args) -> int:
    from tabulate import tabulate

    from baselines.zoo import entry_defense, load_zoo
    from benchmark.tools.precision_check import run_precision_check

    device = _pick_device(args.device)
    zoo = load_zoo(args.dataset)
    entry = zoo.entry(args.entry)
    dataset = load_spec().dataset(zoo.dataset)
    defense = entry_defense(entry, dataset.num_classes, in_channels=dataset.input_shape[0], device=device)
    print(f"precision check: {args.precision} vs float32 on zoo entry {entry.name} ({zoo.dataset}), "
          f"first {args.n} test images, every white-box attack")
    check = run_precision_check(defense, zoo.dataset, args.precision, n=args.n, device=device,
                                model={"entry": entry.name, "sha256": entry.sha256},
                                progress=not args.no_progress)
    print(tabulate([[a["attack"], _percent(a["float32"]), _percent(a["other"]), f"{100 * a['tolerance']:.1f}",
                     a["flipped"], "yes" if a["within"] else "NO"] for a in check["attacks"]],
                   headers=["measurement", "float32 %", f"{args.precision} %", "tolerance (pts)",
                            "examples flipped", "within"], tablefmt="github"))
    verdict = "passed: allowed on this device" if check["passed"] else "FAILED: stays refused"
    print(f"\n{args.precision} on {check['device_name']} (torch {check['torch']}): {verdict}")
    return 0 if check["passed"] else 1


# ---------------------------------------------------------------- submissions


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
    device = _pick_device(args.device)
    defense, _ = submission_defense(manifest, _fetch(manifest, args), dataset, device)
    report = smoke_check(defense, dataset, n=args.n, data_dir=args.data_dir, device=device)
    print(f"{manifest.name}: loads as {defense.name}, output shape and values checked")
    if report.missing_data:
        print(f"clean accuracy not measured: {report.missing_data}")
        return 0
    low, high = report.interval
    print(f"clean accuracy on the first {report.n} {dataset.name} test images: "
          f"{_percent(report.accuracy)}% [{100 * low:.1f}, {100 * high:.1f}]")
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
    device = _pick_device(args.device)
    budget, reason = _run_budget(args, device)
    defense, entry = submission_defense(manifest, _fetch(manifest, args), spec.dataset(manifest.dataset),
                                        device)
    out = _default_out(manifest.dataset, manifest.name, budget, Path(args.out_dir))
    print(f"judging {manifest.name} on {manifest.dataset}, budget {budget} ({reason}) -> {out}")
    result = evaluate(defense, manifest.dataset, budget=budget, seed=args.seed, out=out, device=device,
                      data_dir=args.data_dir, entry=entry, spec=spec, progress=not args.no_progress,
                      **_numerics(args))
    if not is_main_process():
        return 0
    print(format_result(result))
    print(f"\nrecord written to {out}; regenerate the pages with `threatbench leaderboard`")
    return 0


# ---------------------------------------------------------------- parser


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    """Where and how a command runs: device, data root, progress bars."""
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--data-dir", help="dataset root (else $THREATBENCH_DATA, system paths, download)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_numerics(parser: argparse.ArgumentParser) -> None:
    """How the passes run: precision and kernel options, all recorded in the provenance."""
    parser.add_argument("--precision", choices=["float32", "tf32", "bf16"], default="float32",
                        help="float32 (default); tf32 or bf16 autocast only after `threatbench "
                             "precision-check` passed on this device; recorded in the provenance")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                        help="auto (default): channels_last on a GPU for convolutional models, "
                             "contiguous on a CPU")
    parser.add_argument("--cudnn-autotune", action="store_true",
                        help="let cuDNN time and pick its fastest algorithms (GPU only): faster, but "
                             "results then agree with other runs and shard layouts only up to float "
                             "rounding")


def _numerics(args) -> dict[str, Any]:
    """The evaluate() keywords of the options `_add_numerics` added."""
    return {"precision": args.precision, "memory_format": args.memory_format,
            "cudnn_autotune": args.cudnn_autotune}


NO_CASCADE_HELP = ("diagnostic: NAttack attacks every example of its subsample, not only the survivors of "
                   "the other families (same per-example worst case, many more queries; recorded)")


CHECKPOINT_DIR_HELP = ("keep the resumable checkpoint in this directory (default: hidden beside the record); "
                       "commit it to resume on another machine (docs/long-evaluations.md)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_runtime(parser)
    parser.add_argument("--seed", type=int, help="default: the spec's seed")
    parser.add_argument("--out", help="result record path (JSON); its directory must exist")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="threatbench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="judge the baseline zoo (default: Fashion-MNIST) and print "
                              "the table")
    run.add_argument("--dataset", default="fashion-mnist", help="whose zoo (baselines/zoo/<dataset>.toml)")
    run.add_argument("--entries", help="comma-separated zoo entries (default: all)")
    run.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    run.add_argument("--families", default="white_box,transfer,adaptive",
                     help="comma-separated subset of white_box,transfer,adaptive")
    run.add_argument("--no-cascade", action="store_true", help=NO_CASCADE_HELP)
    run.add_argument("--checkpoint-dir", help=CHECKPOINT_DIR_HELP)
    run.add_argument("--out-dir", default="threatbench-results",
                     help="records go to <out-dir>/<dataset>/<entry>-<budget>.json")
    run.add_argument("--seed", type=int, help="default: the spec's seed")
    _add_runtime(run)
    _add_numerics(run)
    run.set_defaults(handler=command_run)

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

    zoo = commands.add_parser("zoo", help="manage the baseline zoo")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True, parser_class=_Parser)
    export = zoo_commands.add_parser("export", help="copy a trained recipe's weights into the zoo")
    export.add_argument("recipe", help="recipe file, or a path under baselines/recipes/")
    export.add_argument("--name", help="entry name (default: the recipe's name)")
    export.add_argument("--role", choices=["defense", "undefended", "static"], default="defense")
    export.add_argument("--epoch", type=int, help="a saved epoch (save_epochs) instead of the final one")
    export.add_argument("--storage", choices=["float32", "float16"], default="float16")
    export.add_argument("--paper", help="URL of the paper the baseline follows")
    export.add_argument("--rebuild", action="store_true",
                        help="do not commit the weights: pin the run's sha256 and rebuild from the "
                             "recipe on first use (keeps the zoo under 50 MB)")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.set_defaults(handler=command_zoo_export)
    table = zoo_commands.add_parser("table", help="the zoo's training and ranked numbers as a markdown table")
    table.add_argument("--dataset", default="fashion-mnist")
    table.add_argument("--write-readme", action="store_true", help="also write it into README.md")
    table.set_defaults(handler=command_zoo_table)

    evaluate = commands.add_parser("evaluate", help="judge a checkpoint under the spec")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--arch", required=True, help="mnist_a..mnist_d, resnet20, wrn34_10, timm:<name>")
    evaluate.add_argument("--weights", required=True, help="a .safetensors file")
    evaluate.add_argument("--sha256", help="expected sha256 of the weights file")
    evaluate.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    evaluate.add_argument("--batch-size", type=int)
    evaluate.add_argument("--name", help="entry name in the record (default: the architecture)")
    evaluate.add_argument("--randomized", action="store_true", help="declare the defense randomized")
    evaluate.add_argument("--spec", help="spec file (default: the current packaged spec)")
    evaluate.add_argument("--families", default="white_box,transfer,adaptive",
                          help="comma-separated subset of white_box,transfer,adaptive (a record that "
                               "lacks a family has no overall worst case and is never ranked)")
    evaluate.add_argument("--no-cascade", action="store_true", help=NO_CASCADE_HELP)
    evaluate.add_argument("--checkpoint-dir", help=CHECKPOINT_DIR_HELP)
    _add_common(evaluate)
    _add_numerics(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    spec = commands.add_parser("spec", help="print the threat-model spec as tables")
    spec.add_argument("--dataset")
    spec.add_argument("--spec", help="spec file (default: the current packaged spec)")
    spec.set_defaults(handler=command_spec)

    train = commands.add_parser("train", help="train a baseline defense from its recipe "
                                "(baselines/recipes/<dataset>/<name>.toml)")
    train.add_argument("recipe", help="recipe file, or a path under baselines/recipes/")
    train.add_argument("--out", help="run directory (default: the cache, keyed by the recipe's sha256)")
    _add_runtime(train)
    train.set_defaults(handler=command_train)

    reproduce = commands.add_parser("reproduce", help="check the papers' claims on our baselines and "
                                    "write leaderboard/reproductions/<dataset>.md")
    reproduce.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist"])
    reproduce.add_argument("--budget", choices=list(BUDGETS), default="quick")
    reproduce.add_argument("--evaluate", action="store_true",
                           help="measure what has no record yet (else only render the page)")
    reproduce.add_argument("--only", help="comma-separated planned models / sweeps to measure")
    _add_runtime(reproduce)
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
    _add_runtime(sweep)
    sweep.set_defaults(handler=command_sweep)

    train_source = commands.add_parser("train-source", help="train one of the judge's held-out sources")
    train_source.add_argument("--dataset", required=True)
    train_source.add_argument("--name", required=True, help="the source's name in the spec, e.g. B")
    _add_common(train_source)
    train_source.set_defaults(handler=command_train_source)

    matrix = commands.add_parser("transfer-matrix", help="error rates of attacks crafted on each model "
                                 "(rows) against each model (columns)")
    matrix.add_argument("--dataset", required=True)
    matrix.add_argument("--model", action="append", default=[], help="NAME=ARCH@WEIGHTS.safetensors")
    matrix.add_argument("--attack", help="one of fgsm, rand_fgsm, ifgsm, pgd (default: all)")
    matrix.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
    _add_common(matrix)
    matrix.set_defaults(handler=command_transfer_matrix)

    precision = commands.add_parser("precision-check", help="allow TF32 or bf16 on this device only if "
                                    "every white-box attack stays within float32's statistical tolerance")
    precision.add_argument("--precision", required=True, choices=["tf32", "bf16"])
    precision.add_argument("--dataset", default="fashion-mnist", help="whose zoo holds the trained model")
    precision.add_argument("--entry", default="A_adv", help="a trained zoo entry (default: A_adv)")
    precision.add_argument("--n", type=int, default=500, help="test images")
    _add_runtime(precision)
    precision.set_defaults(handler=command_precision_check)

    submission = commands.add_parser("submission", help="validate, fetch, check and judge a Hub "
                                     "submission (submissions/<name>.yaml)")
    submission_commands = submission.add_subparsers(dest="submission_command", required=True,
                                                    parser_class=_Parser)
    validate = submission_commands.add_parser("validate", help="check manifests offline")
    validate.add_argument("manifests", nargs="+", help="submissions/<name>.yaml files")
    validate.add_argument("--spec", help="spec file (default: the current packaged spec)")
    validate.set_defaults(handler=command_submission_validate)
    for name, handler, text in (
            ("fetch", command_submission_fetch, "download the pinned files into the store, checking "
             "sizes and sha256"),
            ("check", command_submission_check, "CPU smoke check: load, output shape, clean accuracy on "
             "a small subset"),
            ("evaluate", command_submission_evaluate, "judge the submission under the full threat model "
             "and write its record")):
        command = submission_commands.add_parser(name, help=text)
        command.add_argument("manifest", help="submissions/<name>.yaml")
        command.add_argument("--max-mb", type=float, default=4000, help="largest file accepted (MB)")
        command.add_argument("--offline", action="store_true", help="use only the store; no network")
        command.set_defaults(handler=handler)
        if name == "fetch":
            continue
        command.add_argument("--spec", help="spec file (default: the current packaged spec)")
        _add_runtime(command)
        if name == "check":
            command.add_argument("--n", type=int, default=200, help="test images for clean accuracy")
        else:
            command.add_argument("--budget", choices=list(BUDGETS), help=DEFAULT_BUDGET_HELP)
            command.add_argument("--out-dir", default="threatbench-results",
                                 help="the record goes to <out-dir>/<dataset>/<name>-<budget>.json "
                                      "(leaderboard/results for the leaderboard)")
            command.add_argument("--seed", type=int, help="default: the spec's seed")
            _add_numerics(command)

    perf = commands.add_parser("perf", help="time each attack per step against the forward+backward floor")
    perf.add_argument("--device", choices=["cpu", "cuda"])
    perf.add_argument("--batch-size", type=int, default=100)
    perf.add_argument("--repeats", type=int, default=5)
    perf.add_argument("--nattack-images", type=int, default=10)
    perf.add_argument("--nattack-iterations", type=int, default=10)
    perf.add_argument("--smoothing-samples", type=int, default=16, help="draws of smoothed predict")
    perf.add_argument("--data-dir")
    perf.add_argument("--out", help="also write the measurements as JSON (threatbench.perf/1), e.g. "
                                    "leaderboard/perf/<device>.json")
    perf.set_defaults(handler=command_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ThreatbenchError as error:   # DataError included
        from benchmark.runtime.distributed import is_main_process

        if not is_main_process():   # under torchrun every process hits the same error: print it once
            return EXIT_USER_ERROR
        print(f"threatbench: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nthreatbench: interrupted; finished work is checkpointed, rerun the same command to "
              "resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "torch.distributed" in sys.modules:   # only a command that used torch can have a group
            from benchmark.runtime.distributed import leave_process_group

            leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
