"""Citing: one version scheme (package, spec, leaderboard release), CITATION.cff and LICENSE that
agree with pyproject.toml, and BibTeX for the benchmark and for one ranked row, made from its record
(the README's example is what the committed record gives), escaped, and refused for a number that
is not a leaderboard number."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from records import write_true_record

import benchmark
from benchmark.board.citing import CitationError, bibtex_text, cite_benchmark, cite_row, main
from benchmark.evaluation.record_check import load_record
from benchmark.spec import SPEC_DIR, load_spec
from benchmark.version import __version__, release

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "leaderboard/results/fashion-mnist/D-standard.json"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def readme_bibtex() -> list[str]:
    section = (ROOT / "README.md").read_text().split("\n## How to cite\n")[1].split("\n## ")[0]
    return [block + "\n" for block in re.findall(r"```bibtex\n(.*?)\n```", section, re.S)]


def balanced(text: str) -> bool:
    depth = 0
    for character in text:
        depth += {"{": 1, "}": -1}.get(character, 0)
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------- one version scheme


def test_the_package_version_is_one_string_everywhere():
    assert benchmark.__version__ == __version__ == pyproject()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == __version__
    assert release(load_spec().version) == f"threatbench {__version__}, spec {load_spec().version}"


def test_each_spec_file_is_named_by_the_major_version_it_holds():
    files = sorted(SPEC_DIR.glob("v*.toml"))
    assert [f.name for f in files] == ["v1.toml", "v2.toml"]
    for path in files:
        version = load_spec(path).version
        assert re.fullmatch(r"\d+\.\d+\.\d+", version) and f"v{version.split('.')[0]}.toml" == path.name


# ---------------------------------------------------------------- CITATION.cff and LICENSE


def test_citation_cff_names_the_authors_the_version_and_the_license_of_pyproject():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["authors"] == [{"name": "the threatbench authors"}]
    assert cff["license"] == pyproject()["license"]["text"] == "MIT"


@pytest.mark.skipif(importlib.util.find_spec("check_jsonschema") is None,
                    reason="check-jsonschema (with the CFF schema) is not installed: pip install -e '.[test]'")
def test_citation_cff_is_valid_under_the_citation_file_format_schema(tmp_path):
    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                               "vendor.citation-file-format", str(path)], capture_output=True, text=True)

    assert check(ROOT / "CITATION.cff").returncode == 0
    broken = tmp_path / "CITATION.cff"
    broken.write_text((ROOT / "CITATION.cff").read_text().replace("authors:", "writers:"))
    assert check(broken).returncode != 0, "the schema check can fail"


def test_the_license_is_mit_with_the_authors_copyright():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) ") and "the threatbench authors\n" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


# ---------------------------------------------------------------- BibTeX


def test_the_readme_cites_the_benchmark_and_a_real_committed_row():
    benchmark_entry, row_entry = readme_bibtex()
    assert benchmark_entry == cite_benchmark()
    record = load_record(ROOT / EXAMPLE)
    assert row_entry == cite_row(record, EXAMPLE)
    key = record["worst_case"]["all"]
    assert "{{D}" in row_entry and "@misc{threatbench-fashion-mnist-standard-D," in row_entry
    assert f"{100 * key['accuracy']:.1f}\\%" in row_entry and f"n = {key['n']}" in row_entry
    assert f"commit {record['provenance']['git']}" in row_entry and record["spec"]["sha256"] in row_entry


def test_the_row_anchor_the_bibtex_names_is_on_the_committed_page():
    anchor = re.search(r"\.md\\#([A-Za-z0-9_\\-]+)\}", readme_bibtex()[1]).group(1).replace("\\_", "_")
    assert f'<a id="{anchor}"></a>' in (ROOT / "leaderboard" / "fashion-mnist.md").read_text()


def test_a_row_is_cited_by_its_record_not_by_its_rank(tmp_path):
    path = write_true_record(tmp_path, "strong", clean=0.85, white_box=0.52, transfer=0.70, nattack=0.56)
    before = cite_row(load_record(path), "strong.json")
    write_true_record(tmp_path, "stronger", clean=0.95, white_box=0.9, transfer=0.9, nattack=0.9)
    assert cite_row(load_record(path), "strong.json") == before
    assert "year" not in before and "commit not recorded" in before, "a record without them says so"
    assert "52.0\\% (95\\% CI 49.0--54.0), n = 3000, NAttack subsample 500 (two-phase estimate)" in before


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"budget": "quick"}, r"provisional record \(quick budget \(n = 500\)"),
    ({"nattack": None}, r"provisional record \(not run: adaptive\)"),
    ({"white_box": 0.9, "transfer": 0.5}, r"provisional record \(flagged: transfer_beats_white_box\)"),
])
def test_a_number_that_is_not_a_leaderboard_number_is_not_cited(tmp_path, kwargs, reason):
    numbers = {"clean": 0.9, "white_box": 0.5, "transfer": 0.6, "nattack": 0.5, **kwargs}
    path = write_true_record(tmp_path, "x", **numbers)
    with pytest.raises(CitationError, match=reason):
        cite_row(load_record(path), path)


def test_a_superseded_record_is_not_cited():
    path = ROOT / "leaderboard/results/fashion-mnist/spec-1.0.0/A_adv-quick.json"
    with pytest.raises(CitationError, match="a spec 1.0.0 record, superseded by spec 2.0.0"):
        cite_row(load_record(path), path)


def test_record_text_cannot_break_out_of_its_bibtex_field(tmp_path):
    path = write_true_record(tmp_path, "x", clean=0.85, white_box=0.52, transfer=0.70, nattack=0.56)
    record = load_record(path)
    record["entry"]["name"] = "}, note = {forged}, x = {\\%#&$_^~{"
    record["provenance"].update(threatbench="0.1}\n@misc{evil,", git=None, date="2026-03-04T05:06:07Z")
    entry = cite_row(record, "a}b.json")
    assert balanced(entry) and "@misc{evil" not in entry and "\n@" not in entry.rstrip("\n")
    assert entry.count("\n  note") == 1, "no field added"
    assert "year         = {2026},\n  month        = mar," in entry
    assert re.match(r"@misc\{threatbench-fashion-mnist-standard-note-forged-x-_-[0-9a-f]{8},\n", entry)
    assert bibtex_text("50% {a}_b") == r"50\% \textbraceleft{}a\textbraceright{}\_b"


def test_python_m_benchmark_citing_prints_bibtex_or_a_one_line_error(capsys, tmp_path):
    assert main([str(ROOT / EXAMPLE)]) == 0
    assert capsys.readouterr().out == readme_bibtex()[1]
    assert main([]) == 0
    assert capsys.readouterr().out == cite_benchmark()
    broken = tmp_path / "results" / "fashion-mnist" / "x.json"
    write_true_record(tmp_path, "x", clean=0.9, white_box=0.5, transfer=0.6, nattack=None)
    assert main([str(broken)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("threatbench: error: ") and error.count("\n") == 1
    assert json.loads(broken.read_text())["entry"]["name"] == "x"


def test_threatbench_cite_prints_the_same_bibtex(capsys):
    from benchmark.board.citing import cite_benchmark
    from benchmark.cli import main

    assert main(["cite"]) == 0
    assert capsys.readouterr().out == cite_benchmark()
    assert main(["cite", "no/such/record.json"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_the_committed_flagged_a_adv_record_is_refused_as_a_citation():
    """The retrained A_adv raises masking flags (RAND+FGSM beats FGSM, transfer beats white-box): its
    record is evidence on the page, never a number to cite."""
    path = ROOT / "leaderboard/results/fashion-mnist/A_adv-standard.json"
    record = load_record(path)
    with pytest.raises(CitationError, match="flagged"):
        cite_row(record, "leaderboard/results/fashion-mnist/A_adv-standard.json")
