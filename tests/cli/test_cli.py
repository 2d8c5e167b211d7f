"""The command line: user mistakes are one line and exit code 2; the happy paths write records."""

from __future__ import annotations

import json
import pickle
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmark.cli import main
from benchmark.evaluation.results import read_record
from benchmark.models.architectures import build
from benchmark.models.defense import file_sha256
from tests.conftest import requires_fashion


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mnist_d.safetensors"
    save_file(build("mnist_d", 10).network.state_dict(), str(path))
    return path


def _one_line_error(capsys, code, *needles):
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("threatbench") and ": error: " in lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@requires_fashion
def test_evaluate_writes_a_valid_record(weights, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", str(weights),
                 "--sha256", file_sha256(weights), "--out", str(out), "--no-progress", "--name", "D"])
    printed = capsys.readouterr().out
    assert code == 0
    record = read_record(out)
    assert record["entry"]["name"] == "D" and record["entry"]["architecture"] == "mnist_d"
    assert record["entry"]["weights"]["sha256"] == file_sha256(weights)
    assert "pgd" in printed and "worst case (white_box)" in printed and "quick budget" in printed


@pytest.mark.parametrize("argv, needles", [
    (["evaluate", "--dataset", "svhn", "--arch", "mnist_a", "--weights", "{w}"], ["svhn", "fashion-mnist"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "lenet", "--weights", "{w}"], ["lenet", "mnist_a"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", "{tmp}/nope.safetensors"],
     ["not found"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", "{w}", "--sha256", "0" * 64],
     ["sha256"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_a", "--weights", "{w}"], ["do not fit"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", "{w}",
      "--out", "{tmp}"], ["is a directory"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", "{pickle}"],
     ["not a safetensors file"]),
    (["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", "{w}", "--budget", "huge"],
     ["huge"]),
    (["spec", "--dataset", "imagenet2"], ["imagenet2"]),
])
def test_user_mistakes_are_one_line_with_exit_code_2(argv, needles, weights, tmp_path, capsys):
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    argv = [a.format(w=weights, tmp=tmp_path, pickle=pickled) for a in argv]
    _one_line_error(capsys, _exit_code(argv), *needles)


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exit_:   # argparse's own errors
        return exit_.code


@requires_fashion
def test_an_incomplete_data_directory_is_one_clear_error(weights, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    code = main(["evaluate", "--dataset", "fashion-mnist", "--arch", "mnist_d", "--weights", str(weights),
                 "--data-dir", str(data), "--out", str(tmp_path / "r.json")])
    _one_line_error(capsys, code, "fashion-mnist")


def test_console_script_and_module_entry_point():
    completed = subprocess.run([sys.executable, "-m", "benchmark", "spec", "--dataset", "mnist"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "eps 0.3" in completed.stdout


@requires_fashion
def test_perf_prints_ratios_to_the_floor_and_writes_them(tmp_path, capsys):
    out_file = tmp_path / "perf.json"
    assert main(["perf", "--batch-size", "16", "--repeats", "1", "--nattack-images", "2",
                 "--nattack-iterations", "2", "--smoothing-samples", "2", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "floor" in out and "x floor" in out
    for attack in ["fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd"]:
        assert attack in out
    assert "nattack:" in out and "queries/s" in out
    assert "score passes (no gradient) over 600 images" in out
    ratio = float(re.search(r"smoothed predict: 16 images x 2 draws: .* ([\d.]+) x floor", out).group(1))
    assert ratio > 0
    assert "transfer (pgd crafted on held-out B" in out and "1 chunk hit" in out
    assert "not judged on this device" in out

    report = json.loads(out_file.read_text())
    assert report["schema"] == "threatbench.perf/1" and report["model"]["entry"] == "A"
    assert [a["attack"] for a in report["attacks"]] == ["fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd"]
    assert report["nattack"]["queries"] > 0 and report["transfer_cache"]["hits"] == 1
    assert [c["chunk"] for c in report["score_chunks"]] == [0, 30, 60, 100, 300]
    assert all(c["images"] == 600 and c["images_per_second"] > 0 for c in report["score_chunks"])
    assert "smoothed scoring (model A with PNI-W weight noise, 2 draws) of 600 images" in out
    assert [c["chunk"] for c in report["smoothed_score_chunks"]] == [0, 30, 60, 120, 240]
    assert all(c["queries_per_second"] > 0 for c in report["smoothed_score_chunks"])
    pgd = next(a for a in report["attacks"] if a["attack"] == "pgd")
    goals = {g["measurement"]: g for g in report["goals"]["goals"]}
    assert goals["pgd"]["ratio"] == round(pgd["ratio_to_floor"], 4)
    assert goals["smoothed_predict"]["ratio"] == round(report["smoothed_predict"]["ratio_to_floor"], 4)
    assert all(g["met"] == (g["ratio"] <= g["at_most"]) for g in goals.values())
    assert report["goals"]["judged"] is False   # the goals are set for a GPU; the test runs on a CPU
    assert report["provenance"]["device"] == "cpu" and report["provenance"]["total_seconds"] > 0


def test_perf_refuses_an_output_under_a_file_before_measuring(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    _one_line_error(capsys, main(["perf", "--out", str(tmp_path / "file" / "perf.json")]),
                    "a file is in the way", "choose another --out")


def test_help_imports_no_torch():
    """`threatbench --help` and `threatbench spec` answer without importing torch (the slow part of
    a start: seconds), so they answer at once; the commands that measure import it when they run."""
    code = ("import sys\nfrom benchmark.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['spec', '--dataset', 'fashion-mnist'])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("NO TORCH"), result.stdout[-300:]


def test_one_rule_for_the_default_budget_of_every_command_that_measures(capsys):
    from types import SimpleNamespace

    from benchmark.cli import build_parser
    from benchmark.cli.common import DEFAULT_BUDGET_HELP, run_budget

    assert run_budget(SimpleNamespace(budget=None), torch.device("cpu"))[0] == "quick"
    assert run_budget(SimpleNamespace(budget=None), torch.device("cuda"))[0] == "full"
    assert run_budget(SimpleNamespace(budget="standard"), torch.device("cpu")) == ("standard", "--budget")
    parser = build_parser()
    for argv in (["run"], ["evaluate"], ["transfer-matrix"], ["submission", "evaluate"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])
        assert " ".join(DEFAULT_BUDGET_HELP.split()) in " ".join(capsys.readouterr().out.split()), argv


@requires_fashion
def test_run_judges_the_chosen_zoo_entries_and_prints_the_table(tmp_path, capsys):
    from benchmark.cli import main

    code = main(["run", "--entries", "D", "--families", "white_box", "--out-dir", str(tmp_path),
                 "--no-progress", "--device", "cpu"])
    output = capsys.readouterr().out
    assert code == 0
    assert "budget quick (no GPU found" in output or "budget quick (--budget)" in output
    record = (tmp_path / "fashion-mnist" / "D-quick.json").read_text()
    assert '"name": "D"' in record and '"recipe"' in record
    summary = output.split("the fashion-mnist zoo")[1]
    row = next(line for line in summary.splitlines() if line.startswith("| D "))
    assert "transfer_beats_white_box" not in row, "only raised flags are listed"


def test_run_refuses_an_unknown_zoo_entry(capsys):
    from benchmark.cli import main

    assert main(["run", "--entries", "Z", "--no-progress"]) == 2
    assert "no entry 'Z'" in capsys.readouterr().err


def test_what_run_prints_fits_in_100_columns():
    """The per-entry table, its notes and the zoo summary of committed records, wrapped or narrow
    enough for a 100-column terminal (the README's first command prints them)."""
    from pathlib import Path

    from tabulate import tabulate

    from benchmark.cli.common import TERMINAL_WIDTH
    from benchmark.cli.report import SUMMARY_HEADERS, flag_notes, format_result, zoo_summary_rows
    from benchmark.evaluation.record import Result
    from benchmark.evaluation.results import read_outcomes, record_paths

    results = Path(__file__).resolve().parents[2] / "leaderboard" / "results"
    paths = record_paths(results)
    assert paths, "no committed record to print"
    records = []
    for path in paths:
        record = json.loads(path.read_text())
        records.append(record)
        for line in format_result(Result(record=record, outcomes=read_outcomes(path))).splitlines():
            assert len(line) <= TERMINAL_WIDTH, f"{path.name}: {line}"
    summary = tabulate(zoo_summary_rows([{**r, "entry": {**r["entry"], "name": "A_cni-smoothed"}} for r in records]),
                       tablefmt="github", headers=SUMMARY_HEADERS)
    assert max(len(line) for line in summary.splitlines()) <= TERMINAL_WIDTH
    two_flags = {"flags": {"rand_fgsm_beats_fgsm": {"raised": True}, "transfer_beats_white_box": {"raised": True}}}
    summary_row = zoo_summary_rows([{**records[0], **two_flags}])[0]
    assert summary_row[-1] == "2 raised"
    notes = flag_notes([{**records[0], "entry": {"name": "A_cni-smoothed"}, **two_flags}])
    assert "rand_fgsm_beats_fgsm, transfer_beats_white_box" in " ".join(notes).replace("\n  ", " ")
    assert max(len(line) for note in notes for line in note.splitlines()) <= TERMINAL_WIDTH


def test_one_default_results_location_everywhere_it_is_documented():
    """Every command that writes a record defaults to threatbench-results/; the README and the
    leaderboard's index say so, and say how a record reaches leaderboard/results/."""
    from pathlib import Path

    from benchmark.cli import build_parser

    parser = build_parser()
    defaults = {parser.parse_args(argv).out_dir for argv in (["run"], ["submission", "evaluate", "x.yaml"])}
    assert defaults == {"threatbench-results"}
    from benchmark.cli.common import default_out
    assert str(default_out.__defaults__[0]) == "threatbench-results"
    repository = Path(__file__).resolve().parents[2]
    for page in (repository / "README.md", repository / "leaderboard" / "README.md"):
        text = " ".join(page.read_text().split())
        assert "threatbench-results/<dataset>/<entry>-<budget>.json" in text, page
    assert "--out-dir leaderboard/results" in " ".join((repository / "leaderboard" / "README.md").read_text().split())


def _listed(capsys, *argv: str) -> list[str]:
    assert main(["list", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    return lines


def _line_of(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.startswith(name + " "))


def test_list_architectures_names_each_with_its_paper_then_the_composed_names(capsys):
    lines = _listed(capsys, "architectures")
    mnist_a = _line_of(lines, "mnist_a")
    assert "1 channel" in mnist_a and "Tramer et al. 2018, Table 6 (A)" in mnist_a
    assert "3 channels" in _line_of(lines, "resnet20")
    for composed in ("timm:<any timm model name>", "pni:<name>", "cni:<name>"):
        assert _line_of(lines, composed)


def test_list_zoo_reads_the_zoo_file_as_data(capsys):
    lines = _listed(capsys, "zoo")
    assert _line_of(lines, "A").split()[1:] == ["undefended", "mnist_a"]
    smoothed = _line_of(lines, "A_pni-smoothed")   # role and architecture from its base entry
    assert "defense" in smoothed and "pni:mnist_a, smoothed (16 draws" in smoothed


def test_list_attacks_gives_each_its_families_and_the_spec_parameters(capsys):
    lines = _listed(capsys, "attacks", "--dataset", "mnist")
    assert "eps 0.3" in lines[0]
    assert _line_of(lines, "rand_fgsm").split(None, 1)[1].startswith("white_box, transfer: label true, alpha")
    assert "white_box (randomized entries)" in _line_of(lines, "epgd")
    assert "adaptive: population" in _line_of(lines, "nattack")


def test_list_datasets_gives_each_its_eps_and_budgets(capsys):
    lines = _listed(capsys, "datasets")
    assert "eps 0.1;" in _line_of(lines, "fashion-mnist")
    assert "eps 0.0313725 (8/255)" in _line_of(lines, "cifar10")


@pytest.mark.parametrize("argv, needles", [
    (["list", "models"], ["models", "architectures"]),
    (["list", "zoo", "--dataset", "svhn"], ["svhn", "fashion-mnist"]),
    (["list", "attacks", "--dataset", "svhn"], ["svhn", "fashion-mnist"]),
])
def test_list_mistakes_are_one_line(argv, needles, capsys):
    _one_line_error(capsys, _exit_code(argv), *needles)


def test_a_reader_that_stops_early_gets_no_traceback():
    """`threatbench list attacks | head -1`: the pipe closes under the command, which exits quietly."""
    # `true` exits without reading, long before the command (which imports for a second) writes.
    done = subprocess.run(f"{shlex.quote(sys.executable)} -m benchmark list attacks | true; echo ${{PIPESTATUS[0]}}",
                          shell=True, capture_output=True, text=True, timeout=120, executable="/bin/bash",
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "141", done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


@requires_fashion
def test_run_judges_the_other_entries_when_one_cannot_be_loaded(tmp_path, capsys, monkeypatch):
    """An entry whose weights fail (a rebuild on other CPU kernels, a bad download) is reported, and
    the entries after it are still judged; the exit status says the run is incomplete."""
    import baselines.zoo
    from benchmark.cli import main
    from benchmark.errors import WeightsError

    judge_entry = baselines.zoo.entry_defense

    def refuse_c(entry, *args, **kwargs):
        if entry.name == "C":
            raise WeightsError("C: rebuilt weights do not match the pinned sha256")
        return judge_entry(entry, *args, **kwargs)

    monkeypatch.setattr(baselines.zoo, "entry_defense", refuse_c)
    code = main(["run", "--entries", "C,D", "--families", "white_box", "--out-dir", str(tmp_path),
                 "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    assert (tmp_path / "fashion-mnist" / "D-quick.json").is_file()
    assert not (tmp_path / "fashion-mnist" / "C-quick.json").exists()
    assert "not judged: C: rebuilt weights do not match" in captured.out
    assert "1 of 2 entries not judged" in captured.err and "C: rebuilt weights" in captured.err
    assert "| D " in captured.out.split("the fashion-mnist zoo")[1]


_SLOW_COMMAND = """
import argparse, sys, time
import benchmark.cli as cli

def handler(args):
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        print("checkpointed", flush=True)   # where evaluate() and train save their finished work
        raise

parser = argparse.ArgumentParser()
parser.set_defaults(handler=handler)
cli.build_parser = lambda: parser
sys.exit(cli.main([]))
"""


def test_sigterm_takes_the_ctrl_c_path_so_finished_work_is_checkpointed():
    """A machine that ends a session sends SIGTERM: the command saves and says how to resume,
    instead of dying between two periodic checkpoints."""
    from benchmark.cli.common import EXIT_INTERRUPTED

    command = subprocess.Popen([sys.executable, "-c", _SLOW_COMMAND], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert command.stdout.readline().strip() == "ready"
    command.send_signal(signal.SIGTERM)
    out, err = command.communicate(timeout=60)
    assert command.returncode == EXIT_INTERRUPTED, err
    assert "checkpointed" in out
    assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err
