"""Sharded evaluation with torchrun (gloo on the CPU): the record is the single-process record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmark.evaluation.results import read_record
from benchmark.models.architectures import build
from benchmark.runtime.distributed import Shard
from tests.conftest import requires_fashion, write_small_spec

ZOO = Path(__file__).resolve().parents[2] / "baselines" / "zoo" / "weights" / "fashion-mnist"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_partition_the_batch_grid(world_size):
    n, batch = 103, 10
    masks = [Shard(rank, world_size).owned_mask(n, batch) for rank in range(world_size)]
    assert (np.sum(masks, axis=0) == 1).all(), "every example belongs to exactly one process"
    for rank, mask in enumerate(masks):   # whole batches of the single-process grid
        owned_batches = {i // batch for i in np.flatnonzero(mask)}
        assert owned_batches == {b for b in range(11) if b % world_size == rank}


def _environment(cache: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**environment, "THREATBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _command(processes: int, arguments: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "benchmark", *arguments]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "benchmark", *arguments]


def _evaluate_arguments(spec: Path, out: Path, arch: str, weights: Path, *extra: str) -> list[str]:
    return ["evaluate", "--dataset", "fashion-mnist", "--arch", arch, "--weights", str(weights), "--spec",
            str(spec), "--batch-size", "20", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


def run_evaluation(processes: int, arguments: list[str], cache: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(processes, arguments), capture_output=True, text=True,
                            env=_environment(cache), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def comparable(record_path: Path) -> dict:
    """The record without what may differ between runs: timing, provenance, file names."""
    record = read_record(record_path)
    record.pop("provenance")
    record.pop("examples_file")
    for key in ("seconds", "seconds_by_family", "wall_seconds", "processes"):   # passes and queries stay
        record["costs"].pop(key)
    for measurement in [record["clean"], *record["attacks"].values(), *record["diagnostics"].values()]:
        measurement.pop("seconds")
    return record


def examples(record_path: Path) -> str:
    return record_path.with_name(f"{record_path.stem}.examples.json").read_text()


@requires_fashion
@pytest.mark.slow
def test_torchrun_layouts_of_1_2_and_3_processes_give_the_single_process_record(tmp_path):
    spec = write_small_spec(tmp_path / "spec.toml", n=90, nattack_n=6, nattack_max_iterations=4)
    records = {}
    for processes in (1, 2, 3):
        out = tmp_path / f"D-{processes}.json"
        result = run_evaluation(processes, _evaluate_arguments(spec, out, "mnist_d", ZOO / "D.safetensors"),
                                tmp_path / "cache")
        assert f"({processes} process(es))" in result.stdout
        assert result.stdout.count("record written") == 1, "only rank 0 prints"
        assert read_record(out)["provenance"]["processes"] == processes
        assert not list(tmp_path.glob(".*state.json")), "checkpoints are removed once the record exists"
        records[processes] = out
    single = comparable(records[1])
    assert all(status["status"] == "run" for status in single["families"].values())
    assert single["attacks"]["nattack"]["queries"]["total"] > 0
    for processes in (2, 3):
        assert comparable(records[processes]) == single, f"{processes} processes differ from one"
        assert examples(records[processes]) == examples(records[1])


def _noisy_weights(path: Path) -> Path:
    """Model D with PNI weight noise (alpha 0.25 per layer): a randomized defense."""
    network = build("pni:mnist_d", 10).network
    state = {**network.state_dict(), **{k: v.float() for k, v in load_file(str(ZOO / "D.safetensors")).items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@requires_fashion
@pytest.mark.slow
def test_a_randomized_defense_sharded_gives_the_single_process_record(tmp_path):
    spec = write_small_spec(tmp_path / "spec.toml", n=60, nattack_n=4, nattack_max_iterations=2)
    weights = _noisy_weights(tmp_path / "pni-d.safetensors")
    outs = {}
    for processes in (1, 2):
        outs[processes] = tmp_path / f"pni-{processes}.json"
        run_evaluation(processes, _evaluate_arguments(spec, outs[processes], "pni:mnist_d", weights,
                                                      "--randomized", "--families", "white_box,adaptive"),
                       tmp_path / "cache")
    single = comparable(outs[1])
    assert single["randomness"]["attacked_as_randomized"] and "epgd" in single["attacks"]
    assert single["clean"].get("spread") is not None, "repeated predictions of a random model"
    assert comparable(outs[2]) == single
    assert examples(outs[2]) == examples(outs[1])


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _rank_of(pid: int) -> int | None:
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [item.split(b"=", 1)[1] for item in environment if item.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def _done_measurements(path: Path) -> dict[str, float]:
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {name: m["costs"]["seconds"] for name, m in state["measurements"].items() if m["done"]}


@requires_fashion
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir() or sys.platform != "linux", reason="needs Linux /proc to find a rank")
def test_a_killed_rank_leaves_its_finished_shards_resumable(tmp_path):
    spec = write_small_spec(tmp_path / "spec.toml", n=200, nattack_n=6, nattack_max_iterations=4)
    out = tmp_path / "D.json"
    arguments = _evaluate_arguments(spec, out, "mnist_d", ZOO / "D.safetensors")
    states = [tmp_path / f".D.shard{rank}of2.state.json" for rank in range(2)]
    launcher = subprocess.Popen(_command(2, arguments), env=_environment(tmp_path / "cache"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not all("fgsm" in _done_measurements(p) for p in states):
            assert launcher.poll() is None, "the evaluation ended before a rank could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rank1 = next(p for p in _children(launcher.pid) if _rank_of(p) == 1)
        os.kill(rank1, signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert not out.exists()
    saved = [_done_measurements(p) for p in states]
    assert all("clean" in s and "fgsm" in s for s in saved), "both shards kept their finished measurements"

    run_evaluation(2, arguments, tmp_path / "cache")
    reference = tmp_path / "D-single.json"
    run_evaluation(1, _evaluate_arguments(spec, reference, "mnist_d", ZOO / "D.safetensors"), tmp_path / "cache")
    assert comparable(out) == comparable(reference)
    resumed = read_record(out)
    # A resumed measurement keeps the costs its shards checkpointed: it was not recomputed.
    assert resumed["clean"]["seconds"] == pytest.approx(sum(s["clean"] for s in saved), abs=2e-3)
    assert not any(p.exists() for p in states)


def run_two_processes(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` in a real 2-process torchrun group (gloo); fails the test if a process fails."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(script)], capture_output=True, text=True, env=_environment(tmp_path / "c"),
                            timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def rank_outputs(tmp_path: Path) -> list[str]:
    """What each rank wrote to its own file (the ranks share one stdout, where lines can interleave)."""
    return [(tmp_path / f"rank{rank}.out").read_text() for rank in range(2)]


def test_gloo_sum_is_exact_for_disjoint_shards(tmp_path):
    """The reduction used to gather outcomes, in two real gloo processes."""
    script = tmp_path / "reduce.py"
    script.write_text(
        "import numpy as np, torch\n"
        "from benchmark.runtime.distributed import current_shard, sum_over_shards, leave_process_group\n"
        "shard = current_shard(torch.device('cpu'))\n"
        "values = np.zeros(7, dtype=np.int64)\n"
        "mask = shard.owned_mask(7, 2)\n"
        "values[mask] = np.arange(7)[mask] + 1\n"
        "total = sum_over_shards(values, shard, torch.device('cpu'))\n"
        "assert (total == np.arange(1, 8)).all(), total\n"
        f"open(r'{tmp_path}' + f'/rank{{shard.rank}}.out', 'w').write(f'{{shard.world_size}} ok')\n"
        "leave_process_group()\n")
    run_two_processes(script, tmp_path)
    assert rank_outputs(tmp_path) == ["2 ok", "2 ok"]   # both ranks checked their sums
    assert torch.distributed.is_available()


def test_processes_agree_on_one_batch_size(tmp_path):
    """Each process may fit another batch on its GPU; all take the smallest, so the grid is shared."""
    script = tmp_path / "batch.py"
    script.write_text(
        "import torch\n"
        "from benchmark.runtime.distributed import current_shard, min_over_shards, leave_process_group\n"
        "shard = current_shard(torch.device('cpu'))\n"
        "agreed = min_over_shards([512, 256][shard.rank], shard, torch.device('cpu'))\n"
        "assert agreed == 256, agreed\n"
        f"open(r'{tmp_path}' + f'/rank{{shard.rank}}.out', 'w').write(f'agreed {{agreed}}')\n"
        "leave_process_group()\n")
    run_two_processes(script, tmp_path)
    assert rank_outputs(tmp_path) == ["agreed 256", "agreed 256"]
