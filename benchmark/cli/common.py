"""What every command group shares: the one-line-error parser, line width, device and budget rules,
and the options of the commands that measure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import ThreatbenchError
from benchmark.runtime.kernel_tuning import MEMORY_FORMATS

if TYPE_CHECKING:   # the CLI imports torch only when a command needs it: `--help` stays fast
    import torch

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
TERMINAL_WIDTH = 100   # what every table and line `run` / `evaluate` print fits in (tests/cli/test_cli.py)
DEFAULT_BUDGET_HELP = ("default (every command that measures): full on a GPU, quick on a CPU (a smoke test, "
                       "never ranked); standard gives ranked numbers on a CPU")
NO_CASCADE_HELP = ("diagnostic: NAttack attacks every example of its subsample, not only the survivors of "
                   "the other families (same per-example worst case, many more queries; recorded)")
CHECKPOINT_DIR_HELP = ("keep the resumable checkpoint in this directory (default: hidden beside the record); "
                       "commit it to resume on another machine (docs/long-evaluations.md)")
SPEC_FILE_HELP = "spec file (default: the current packaged spec)"
SEED_HELP = "default: the spec's seed"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):   # one line, not usage + message
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def wrap(text: str) -> str:
    """A line of prose folded to TERMINAL_WIDTH, continuation lines indented."""
    import textwrap

    return "\n".join(textwrap.fill(line, TERMINAL_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
                     for line in text.split("\n"))


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def comma_separated(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def pick_device(requested: str | None) -> torch.device:
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise ThreatbenchError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def run_budget(args, device: torch.device) -> tuple[str, str]:
    """The one rule for every command that measures (run, evaluate, submission evaluate,
    transfer-matrix): --budget if given, else `full` on a GPU and `quick` (a smoke test) on a CPU."""
    if args.budget:
        return args.budget, "--budget"
    if device.type == "cuda":
        return "full", "a GPU is available"
    return "quick", ("no GPU found: a smoke test, never ranked; --budget standard gives ranked numbers on a "
                     "CPU (hours for the robust entries)")


def default_out(dataset: str, entry_name: str, budget: str,
                root: Path = Path("threatbench-results")) -> Path:
    """<root>/<dataset>/<entry>-<budget>.json (the directory is created)."""
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry_name)
    out = root / dataset / f"{safe_name}-{budget}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def cascade_options(args) -> dict[str, Any]:
    """--no-cascade: NAttack on its whole subsample (a diagnostic; the record says so);
    --checkpoint-dir: where the resumable checkpoint goes."""
    options: dict[str, Any] = {"cascade": False} if getattr(args, "no_cascade", False) else {}
    if getattr(args, "checkpoint_dir", None):
        options["checkpoint_dir"] = Path(args.checkpoint_dir)
    return options


def numerics(args) -> dict[str, Any]:
    """The evaluate() keywords of the options `add_numerics` added."""
    return {"precision": args.precision, "memory_format": args.memory_format,
            "cudnn_autotune": args.cudnn_autotune}


# ---------------------------------------------------------------- options


def add_runtime(parser: argparse.ArgumentParser) -> None:
    """Where and how a command runs: device, data root, progress bars."""
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--data-dir", help="dataset root (else $THREATBENCH_DATA, system paths, download)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_numerics(parser: argparse.ArgumentParser) -> None:
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


def add_common(parser: argparse.ArgumentParser) -> None:
    add_runtime(parser)
    parser.add_argument("--seed", type=int, help=SEED_HELP)
    parser.add_argument("--out", help="result record path (JSON); its directory must exist")
