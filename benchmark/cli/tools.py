"""The judge's own measurements: `perf` (attack speed against the forward+backward floor) and
`precision-check` (may TF32 or bf16 replace float32 on this device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.cli.common import add_runtime, percent, pick_device
from benchmark.spec import WHITE_BOX_ATTACKS, load_spec

if TYPE_CHECKING:
    import torch

PERF_DATASET = "fashion-mnist"


def _perf_model(num_classes: int, device: torch.device):
    """Model A of the committed zoo: trained weights, so that NAttack's queries are those of a real run."""
    from baselines.zoo import entry_defense, load_zoo

    entry = load_zoo(PERF_DATASET).entry("A")
    defense = entry_defense(entry, num_classes, device=device)
    return defense, {"dataset": PERF_DATASET, "entry": entry.name, "architecture": entry.architecture,
                     "sha256": entry.sha256}


def _perf_kernel_options(defense, x, y, args, device):
    """Time the floor under every kernel option, then put evaluate's default one in place."""
    from tabulate import tabulate

    from benchmark.runtime.kernel_tuning import apply_memory_format, resolve_tuning
    from benchmark.tools.perf import measure_kernel_tunings

    tunings = measure_kernel_tunings(defense, x, y, repeats=args.repeats)
    print("\nkernel options: the floor (one forward + backward w.r.t. the input) under each")
    print(tabulate([[t.tuning.memory_format, "on" if t.tuning.cudnn_autotune else "off",
                     f"{1000 * t.floor_seconds:.2f}", f"{t.speedup_over(tunings[0]):.3f}"] for t in tunings],
                   headers=["memory format", "cudnn autotune", "floor ms", "speed-up"], tablefmt="github"))
    tuning = resolve_tuning(defense, device)
    apply_memory_format(defense, tuning)
    return tunings, tuning


def _perf_attacks(defense, dataset, x, y, args, tuning):
    from tabulate import tabulate

    from benchmark.tools.perf import measure_attacks

    attacks = [a for a in WHITE_BOX_ATTACKS if a != "epgd"]
    floor, rows = measure_attacks(defense, dataset, x, y, attacks, repeats=args.repeats)
    print(f"\nbelow: evaluate's defaults, memory format {tuning.memory_format}, cudnn autotune off")
    print(f"floor (one forward + backward w.r.t. the input): {1000 * floor:.2f} ms\n")
    print(tabulate([[r.attack, r.gradient_steps, f"{1000 * r.seconds_per_step:.2f}",
                     f"{r.ratio_to_floor:.3f}", f"{r.images_per_second:.0f}"] for r in rows],
                   headers=["attack", "gradient steps", "ms / step", "x floor", "images / s"],
                   tablefmt="github"))
    return floor, rows


def _perf_nattack(defense, dataset, x, y, args):
    from benchmark.tools.perf import measure_nattack

    k = max(1, args.nattack_images)
    nattack = measure_nattack(defense, dataset, x[:k], y[:k], iterations=args.nattack_iterations,
                              repeats=max(1, args.repeats // 2))
    print(f"\nnattack: {k} images x population {dataset.nattack.population}, "
          f"{args.nattack_iterations} iterations: {nattack.queries_per_second:.0f} queries/s; floor "
          f"(scoring its {k * dataset.nattack.population} images as NAttack batches them): "
          f"{nattack.floor_images_per_second:.0f} images/s; time per query {nattack.ratio_to_floor:.3f} x floor")
    return nattack


def _perf_score_chunks(defense, dataset, args, device):
    """The populations of --nattack-images images, scored in one pass and in chunks."""
    from tabulate import tabulate

    from benchmark.attacks.nattack import CPU_SCORE_CHUNK
    from benchmark.tools.perf import measure_score_chunks

    images = max(1, args.nattack_images) * dataset.nattack.population
    chunks = measure_score_chunks(defense, images, tuple(dataset.input_shape), device,
                                  repeats=max(1, args.repeats // 2))
    one_pass = chunks[0].seconds
    print(f"\nscore passes (no gradient) over {images} images, NAttack's populations of "
          f"{max(1, args.nattack_images)} images; on a CPU the judge scores a deterministic defense in "
          f"chunks of {CPU_SCORE_CHUNK}, on a GPU all in one pass")
    print(tabulate([["one pass" if c.chunk == 0 else c.chunk, f"{c.images_per_second:.0f}",
                     f"{one_pass / c.seconds:.2f}"] for c in chunks],
                   headers=["chunk", "images / s", "speed-up"], tablefmt="github"))
    return chunks


def _perf_smoothed_score_chunks(defense, dataset, args, device):
    """A smoothed noisy copy of the model scoring NAttack's populations, in one pass and in chunks."""
    from tabulate import tabulate

    from benchmark.tools.perf import measure_smoothed_score_chunks

    images = max(1, args.nattack_images) * dataset.nattack.population
    chunks = measure_smoothed_score_chunks(defense, images, tuple(dataset.input_shape), device,
                                           samples=args.smoothing_samples, repeats=max(1, args.repeats // 2))
    one_pass = chunks[0].seconds
    print(f"\nsmoothed scoring (model A with PNI-W weight noise, {args.smoothing_samples} draws) of {images} "
          "images; on a CPU the judge scores one draw per pass in chunks of rows that share it")
    print(tabulate([["one pass per block" if c.chunk == 0 else c.chunk, f"{c.images_per_second:.1f}",
                     f"{one_pass / c.seconds:.2f}"] for c in chunks],
                   headers=["chunk", "queries / s", "speed-up"], tablefmt="github"))
    return chunks


def _perf_smoothing(defense, x, args):
    from benchmark.tools.perf import measure_smoothed_predict

    smoothing = measure_smoothed_predict(defense, x, samples=args.smoothing_samples,
                                         repeats=args.repeats)
    print(f"\nsmoothed predict: {smoothing.images} images x {smoothing.samples} draws: "
          f"{1000 * smoothing.seconds:.2f} ms; floor (one forward of {smoothing.images * smoothing.samples} "
          f"images, no gradient): {1000 * smoothing.floor_seconds:.2f} ms; {smoothing.ratio_to_floor:.3f} x floor")
    return smoothing


def _perf_transfer(dataset, eval_set, args, device):
    """A transfer attack crafted once on a held-out source, then read from the cache; None without one."""
    import tempfile

    from benchmark.attacks.sources import load_held_out_sources
    from benchmark.tools.perf import measure_transfer_cache

    sources, reason = load_held_out_sources(dataset, device)
    if not sources:
        print(f"\ntransfer: skipped ({reason})")
        return None
    source = sources[0]
    with tempfile.TemporaryDirectory() as cache_root:
        transfer = measure_transfer_cache(source, dataset, eval_set, Path(cache_root), device=device,
                                          batch_size=args.batch_size)
    print(f"\ntransfer (pgd crafted on held-out {source.name}, {args.batch_size} images): first target "
          f"{transfer.crafting_seconds:.2f} s (crafting, {transfer.misses} chunk miss); every later "
          f"target {transfer.cached_seconds:.3f} s ({transfer.hits} chunk hit)")
    return transfer


def _print_goals(goals: dict) -> None:
    from tabulate import tabulate
    judged = "judged here" if goals["judged"] else "not judged on this device, shown for comparison"
    print(f"\nspeed goals (set for {goals['device']}; {judged})")
    print(tabulate([[g["measurement"], f"{g['ratio']:.3f}", f"<= {g['at_most']}", "yes" if g["met"] else "no"]
                    for g in goals["goals"]], headers=["measurement", "x floor", "goal", "met"], tablefmt="github"))


def command_perf(args) -> int:
    import time

    import torch

    from benchmark.data import load_evaluation_set
    from benchmark.evaluation.results import atomic_write_json, check_output_path
    from benchmark.runtime.provenance import collect
    from benchmark.tools.perf import perf_report

    if args.out:
        check_output_path(args.out)   # before minutes of measuring, not after
    started = time.perf_counter()
    dataset = load_spec().dataset(PERF_DATASET)
    device = pick_device(args.device)
    defense, model = _perf_model(dataset.num_classes, device)
    eval_set = load_evaluation_set(PERF_DATASET, args.batch_size, args.data_dir)
    x = torch.stack([eval_set[i][0] for i in range(args.batch_size)]).to(device)
    y = eval_set.labels[: args.batch_size].to(device)
    print(f"zoo model A (sha256 {model['sha256'][:12]}) on {PERF_DATASET}, batch {args.batch_size}, "
          f"device {device}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats")
    tunings, tuning = _perf_kernel_options(defense, x, y, args, device)
    floor, rows = _perf_attacks(defense, dataset, x, y, args, tuning)
    nattack = _perf_nattack(defense, dataset, x, y, args)
    score_chunks = _perf_score_chunks(defense, dataset, args, device)
    smoothed_chunks = _perf_smoothed_score_chunks(defense, dataset, args, device)
    smoothing = _perf_smoothing(defense, x, args)
    transfer = _perf_transfer(dataset, eval_set, args, device)
    report = perf_report(
        model=model, device=device, batch_size=args.batch_size, repeats=args.repeats, tunings=tunings,
        tuning=tuning, floor_seconds=floor, rows=rows, nattack=nattack,
        nattack_iterations=args.nattack_iterations, smoothing=smoothing, transfer=transfer,
        score_chunks=score_chunks, smoothed_score_chunks=smoothed_chunks,
        provenance=collect(device, batch_size=args.batch_size, total_seconds=time.perf_counter() - started,
                           tuning=tuning.as_provenance()))
    _print_goals(report["goals"])
    if args.out:
        atomic_write_json(args.out, report)
        print(f"\nwrote {args.out}")
    return 0


def command_precision_check(args) -> int:
    from tabulate import tabulate

    from baselines.zoo import entry_defense, load_zoo
    from benchmark.tools.precision_check import run_precision_check

    device = pick_device(args.device)
    zoo = load_zoo(args.dataset)
    entry = zoo.entry(args.entry)
    dataset = load_spec().dataset(zoo.dataset)
    defense = entry_defense(entry, dataset.num_classes, in_channels=dataset.input_shape[0], device=device,
                            progress=not args.no_progress)
    print(f"precision check: {args.precision} vs float32 on zoo entry {entry.name} ({zoo.dataset}), "
          f"first {args.n} test images, every white-box attack")
    check = run_precision_check(defense, zoo.dataset, args.precision, n=args.n, device=device,
                                model={"entry": entry.name, "sha256": entry.sha256},
                                progress=not args.no_progress)
    print(tabulate([[a["attack"], percent(a["float32"]), percent(a["other"]), f"{100 * a['tolerance']:.1f}",
                     a["flipped"], "yes" if a["within"] else "NO"] for a in check["attacks"]],
                   headers=["measurement", "float32 %", f"{args.precision} %", "tolerance (pts)",
                            "examples flipped", "within"], tablefmt="github"))
    verdict = "passed: allowed on this device" if check["passed"] else "FAILED: stays refused"
    print(f"\n{args.precision} on {check['device_name']} (torch {check['torch']}): {verdict}")
    return 0 if check["passed"] else 1


# ---------------------------------------------------------------- parsers


def add_parsers(commands) -> None:
    precision = commands.add_parser("precision-check", help="allow TF32 or bf16 on this device only if "
                                    "every white-box attack stays within float32's statistical tolerance")
    precision.add_argument("--precision", required=True, choices=["tf32", "bf16"])
    precision.add_argument("--dataset", default="fashion-mnist", help="whose zoo holds the trained model")
    precision.add_argument("--entry", default="A_adv", help="a trained zoo entry (default: A_adv)")
    precision.add_argument("--n", type=int, default=500, help="test images")
    add_runtime(precision)
    precision.set_defaults(handler=command_precision_check)

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
