"""`threatbench run | evaluate | submission | leaderboard | spec | list | perf | ...`.

A user mistake prints one line (`threatbench: error: ...`) and exits with 2, without a traceback.
Each command group is a module with an `add_parsers(commands)`; the heavy imports (torch, the
baselines) happen inside the command handlers, so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from benchmark.cli import board, evaluate, listing, spec, submission, tools, transfer, zoo
from benchmark.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, Parser
from benchmark.errors import ThreatbenchError

EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, what a shell reports for a command whose reader left

COMMAND_GROUPS = (evaluate, board, zoo, spec, listing, transfer, tools, submission)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="threatbench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def _termination_as_interrupt():
    """Treat SIGTERM like Ctrl-C while a command runs: a machine that ends a session, a job
    scheduler or `kill` then gets the same checkpoint of finished work (an unhandled SIGTERM exits
    at once and loses up to a checkpoint interval of it)."""
    if threading.current_thread() is not threading.main_thread():   # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _termination_as_interrupt():
            status = args.handler(args)
        sys.stdout.flush()   # inside the try: a reader that left shows here, not at interpreter exit
        return status
    except ThreatbenchError as error:   # DataError included
        from benchmark.runtime.distributed import is_main_process

        if not is_main_process():   # under torchrun every process hits the same error: print it once
            return EXIT_USER_ERROR
        print(f"threatbench: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:   # the reader stopped early (`threatbench list attacks | head`)
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("\nthreatbench: interrupted (Ctrl-C or SIGTERM); finished work is checkpointed, rerun the same "
              "command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "torch.distributed" in sys.modules:   # only a command that used torch can have a group
            from benchmark.runtime.distributed import leave_process_group

            leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
