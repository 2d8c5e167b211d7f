"""`threatbench compare` (paired tests on the same examples, refusing records that differ), the
DataFrame of a leaderboard, and the README's Python example, executed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from records import write_true_record

from benchmark.board.compare import CompareError, compare_pair, load_compared
from benchmark.board.dataframe import table
from benchmark.cli import main

REPOSITORY = Path(__file__).resolve().parents[2]
RESULTS = REPOSITORY / "leaderboard" / "results" / "fashion-mnist"


def test_a_paired_test_sees_a_difference_the_intervals_hide(tmp_path):
    """51.5% against 50.0% on the same 3,000 examples: the 95% intervals overlap, but the 45 examples
    on which only the first entry survives white-box attacks are no accident."""
    first = write_true_record(tmp_path, "first", clean=0.9, white_box=0.515, transfer=0.7, nattack=0.6)
    second = write_true_record(tmp_path, "second", clean=0.9, white_box=0.500, transfer=0.7, nattack=0.6)
    a, b = load_compared(first), load_compared(second)
    low_a = a.record["worst_case"]["white_box"]["interval"][0]
    assert low_a < b.record["worst_case"]["white_box"]["interval"][1], "the intervals overlap"
    tests = {t.family: t for t in compare_pair(a, b)}
    white_box = tests["white_box"]
    assert (white_box.a_only, white_box.b_only) == (45, 0) and white_box.p_value == pytest.approx(2 * 2.0 ** -45)
    assert tests["clean"].p_value == 1.0 and tests["transfer"].p_value == 1.0


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(seed=1), "seed"),
    (lambda r: r.update(subset_sha256="2" * 64), "subset_sha256"),
])
def test_records_judged_on_other_examples_are_refused_saying_which_field(tmp_path, change, field):
    a = load_compared(write_true_record(tmp_path, "a", clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6))
    b = load_compared(write_true_record(tmp_path, "b", clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6))
    change(b.record)
    with pytest.raises(CompareError, match=rf"{field} is .* in one and .* in the other"):
        compare_pair(a, b)


def test_the_cli_refuses_another_budget_in_one_line(tmp_path, capsys):
    a = write_true_record(tmp_path, "a", clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6)
    b = write_true_record(tmp_path, "b", clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6, budget="quick")
    assert main(["compare", str(a), str(b)]) == 2
    error = capsys.readouterr().err.strip()
    assert "budget is 'standard' in one and 'quick' in the other" in error and len(error.splitlines()) == 1


def test_compare_against_the_zoo_lists_every_baseline_record(tmp_path, capsys):
    mine = write_true_record(tmp_path, "mine", clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6,
                             kind="submission")
    for name in ("A", "D"):
        write_true_record(tmp_path / "board", name, clean=0.8, white_box=0.2, transfer=0.6, nattack=0.1)
    assert main(["compare", str(mine), "--against", "zoo", "--results-dir", str(tmp_path / "board" / "results")]) == 0
    output = capsys.readouterr().out
    assert "| mine vs A | worst white-box" in output and "| mine vs D | worst white-box" in output
    assert "mine better" in output
    assert main(["compare", str(mine), "--against", "B", "--results-dir", str(tmp_path / "board" / "results")]) == 2
    assert "no committed standard-budget record of 'B'" in capsys.readouterr().err


def test_two_committed_records_compare_as_the_readme_shows(capsys):
    paths = [RESULTS / "A_adv-standard.json", RESULTS / "A-standard.json"]
    if not all(path.is_file() for path in paths):
        pytest.skip("the committed standard records of A_adv and A are not in leaderboard/results")
    assert main(["compare", *map(str, paths)]) == 0
    output = capsys.readouterr().out
    readme = (REPOSITORY / "README.md").read_text()
    for line in re.findall(r"^\| A_adv vs A .*$", readme, re.M):
        assert line in output, line


def test_a_leaderboard_reads_as_a_dataframe_ranked_like_the_page(tmp_path):
    write_true_record(tmp_path, "strong", clean=0.85, white_box=0.52, transfer=0.70, nattack=0.56)
    write_true_record(tmp_path, "weak", clean=0.91, white_box=0.10, transfer=0.40, nattack=0.10)
    write_true_record(tmp_path, "smoke", clean=0.90, white_box=0.60, transfer=0.30, nattack=None, budget="quick")
    board = table("fashion-mnist", results_dir=tmp_path / "results")
    assert board["entry"].tolist() == ["strong", "weak", "smoke"]
    assert board["rank"].tolist()[:2] == [1, 2] and board["rank"].isna().tolist()[2]
    strong = board.iloc[0]
    record = json.loads((tmp_path / "results" / "fashion-mnist" / "strong.json").read_text())
    assert strong["worst_case"] == record["worst_case"]["all"]["accuracy"]
    assert strong["worst_case_low"] <= strong["worst_case"] <= strong["worst_case_high"]


def test_the_readmes_python_example_runs():
    readme = (REPOSITORY / "README.md").read_text()
    marker = "<!-- python example: executed by tests/board/test_compare.py -->"
    code = readme.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)   # the repository's own README, not user input
    assert len(namespace["model"].predict(__import__("torch").rand(4, 1, 28, 28))) == 4
    assert list(namespace["board"].columns)[:2] == ["rank", "entry"]
