"""The pages cannot be made to lie by what a record or a references file holds: every text is escaped
for markdown and HTML (no extra table cell, tag, link or image), links are https:// to the hosts a
manifest may name, pages are written only for the spec's datasets inside the leaderboard directory,
and a malformed field the pages read is a one-line error naming it.

Records are written as plain JSON and read without the record loader's own checks
(`lenient_loader`), so that these tests show what the page writer refuses by itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmark.board import ranking
from benchmark.board.leaderboard import page_path, render_pages, write_pages
from benchmark.board.pages import render_dataset
from benchmark.board.ranking import Row
from benchmark.board.references import Claim, Reference
from benchmark.board.sections import render_references
from benchmark.errors import OutputPathError
from benchmark.evaluation.results import RecordError, read_json
from benchmark.spec import load_spec

ATTACK = ("Table 2 | 99.9 | ranked #1 <script>alert(1)</script> <img src=x onerror=alert(1)> "
          "[click](javascript:alert(1)) https://evil.example/x **bold** `code`")
ESCAPED = ("Table 2 \\| 99.9 \\| ranked #1 &lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(1)&gt; "
           "\\[click\\](javascript:alert(1)) https\\://evil.example/x \\*\\*bold\\*\\* \\`code\\`")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def summary(correct: int, n: int = 100) -> dict:
    return {"accuracy": correct / n, "correct": correct, "n": n, "interval": [correct / n - 0.05, correct / n + 0.05]}


def record(name: str = "robust-a", **changes) -> dict:
    """A quick-budget record (a provisional row) with the fields the pages read."""
    document = {
        "schema": "threatbench.result/1",
        "entry": {"name": name, "kind": "submission", "architecture": "mnist_a",
                  "paper": "https://arxiv.org/abs/1705.07204",
                  "weights": {"repo": "alice/robust-a", "revision": "0" * 40, "file": "model.safetensors",
                              "sha256": "a" * 64},
                  "submission": {"claimed": {"source": "Table 2", "pgd": 61.0}}},
        "dataset": "fashion-mnist", "spec": {"version": load_spec().version, "sha256": "0" * 64},
        "threat_model": {"norm": "linf", "eps": 0.1}, "budget": "quick", "n": 100, "nattack_n": 100,
        "subset_sha256": "1" * 64, "seed": 0, "clean": summary(90),
        "attacks": {"pgd": {"family": "white_box", **summary(50)},
                    "nattack": {"family": "adaptive", **summary(60), "params": {},
                                "queries": {"median": 1234.0, "mean": 1500.0, "max": 9000, "total": 150000}}},
        "families": {"white_box": {"status": "run"}, "transfer": {"status": "run"}, "adaptive": {"status": "run"}},
        "worst_case": {"white_box": summary(50), "transfer": summary(70), "adaptive": summary(60),
                       "all": summary(45)},
        "flags": {"transfer_beats_white_box": {"raised": False}},
        "provenance": {"device": "cpu"},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        table = document
        for parent in parents:
            table = table[parent]
        table[last] = value
    return document


def page_of(*records: dict) -> str:
    rows = [Row(Path(f"{r['entry']['name']}.json"), r, load_spec().version) for r in records]
    return render_dataset("fashion-mnist", rows)


def table_lines(page: str) -> list[str]:
    return [line for line in page.splitlines() if line.startswith("|")]


def tables(page: str) -> list[list[str]]:
    """The page's tables, each as its lines (header, rule, rows)."""
    found: list[list[str]] = []
    previous = ""
    for line in page.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                found.append([])
            found[-1].append(line)
        previous = line
    return found


@pytest.fixture
def lenient_loader(monkeypatch):
    monkeypatch.setattr(ranking, "load_record", lambda path, **_: read_json(path))


def write_record(board: Path, document: dict, name: str = "robust-a") -> Path:
    path = board / "results" / "fashion-mnist" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


# ---------------------------------------------------------------- escaping


def test_text_from_a_record_adds_no_cell_tag_link_or_image():
    flag = {"raised": True, "masking": True, "p_value": 0.001, "evidence": ATTACK}
    page = page_of(record("x|99.9|<b>", entry__kind="<img src=x onerror=alert(1)>",
                          entry__submission={"claimed": {"source": ATTACK, "pgd": 61.0}},
                          flags={"<script>|": flag}))
    assert len(tables(page)) == 3   # flagged, provisional, claims
    for header, _, *rows in tables(page):   # every row has exactly its header's cells
        for row in rows:
            assert len(UNESCAPED_PIPE.findall(row)) == len(UNESCAPED_PIPE.findall(header)), row
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", page)
    assert targets and all(t.startswith(("https://arxiv.org/", "https://huggingface.co/", "../docs/", "README"))
                           for t in targets), targets
    assert "https://evil" not in page, "no autolink"
    claims = page.split("## Submitters' claims")[1]
    assert f"| x\\|99.9\\|&lt;b&gt; | `pgd` | 61 | 50.0 [45.0, 55.0] (quick) | {ESCAPED} |" in claims
    flagged = page.split("## Flagged (not ranked)")[1].split("## Provisional")[0]
    assert f"| &lt;script&gt;\\| | 0.001 | {ESCAPED} |" in flagged


def test_only_https_links_to_allowed_hosts_are_written():
    def provenance(paper: str, **weights) -> str:
        line = next(line for line in table_lines(page_of(record(entry__paper=paper,
                                                                entry__weights={"sha256": "a" * 64, **weights})))
                    if line.startswith("| robust-a | submission |"))
        return UNESCAPED_PIPE.split(line)[-2].strip()

    assert provenance("https://arxiv.org/abs/1705.07204") == "[paper](https://arxiv.org/abs/1705.07204) `aaaaaaaaaaaa`"
    for refused in ("javascript:alert(1)", "http://arxiv.org/abs/1705.07204", "https://evil.example/abs/1",
                    "https://arxiv.org.evil.example/", "https://arxiv.org/abs/1)[x](javascript:alert(1)"):
        assert provenance(refused) == "`aaaaaaaaaaaa`", refused
    assert provenance("", repo="alice/robust-a", revision="0" * 40) == (
        f"[alice/robust-a@0000000](https://huggingface.co/alice/robust-a/tree/{'0' * 40}) `aaaaaaaaaaaa`")
    assert provenance("", repo="alice/robust-a", revision="main") == "alice/robust-a\\@main `aaaaaaaaaaaa`"
    assert provenance("", repo="x](https://evil.example)", revision="0" * 40) == (
        f"x\\](https\\://evil.example)\\@{'0' * 40} `aaaaaaaaaaaa`")


def test_reference_rows_are_escaped_and_linked_only_to_allowed_hosts():
    reference = Reference(name="TRADES|x", role="<i>defense</i>", architecture="wrn34_10",
                          paper="javascript:alert(1)", source=ATTACK, hub_repo="a/b", hub_revision=None,
                          hub_file=None, revision_note="not on the Hub <script>", randomized=False,
                          claimed=(Claim("clean | 99", "clean", 84.92),))
    lines = render_references([reference], [])
    row = next(line for line in lines if line.startswith("| TRADES"))
    assert row == (f"| TRADES\\|x | &lt;i&gt;defense&lt;/i&gt; | clean \\| 99 | `clean` | 84.92 | - | not measured yet | "
                   f"{ESCAPED} | `a/b` (revision not pinned yet) |")
    assert lines[-1] == "- TRADES\\|x: not on the Hub &lt;script&gt;"


# ---------------------------------------------------------------- page paths


def test_a_record_cannot_write_a_page_outside_the_leaderboard(tmp_path, lenient_loader):
    board = tmp_path / "site" / "leaderboard"
    path = write_record(board, record(dataset="../../escape/PWNED"))
    with pytest.raises(RecordError) as info:
        write_pages(board, load_spec().version)
    assert str(info.value) == (f"{path}: field 'dataset': '../../escape/PWNED' is not a dataset of the spec "
                               f"({', '.join(load_spec().datasets)}); pages are written only for those")
    assert not list(tmp_path.rglob("PWNED*"))
    with pytest.raises(OutputPathError, match=re.escape("refusing to write the page '../../escape/PWNED.md'")):
        page_path(board, "../../escape/PWNED.md")
    with pytest.raises(OutputPathError, match=re.escape("refusing to write the page 'svhn.md'")):
        page_path(board, "svhn.md")
    assert page_path(board, "fashion-mnist.md") == board / "fashion-mnist.md"


def test_a_sweep_folder_of_another_name_writes_no_page(tmp_path, lenient_loader):
    board = tmp_path / "leaderboard"
    write_record(board, record())
    (board / "sweeps" / "PWNED").mkdir(parents=True)
    with pytest.raises(OutputPathError) as info:
        render_pages(board / "results", load_spec().version)
    assert str(info.value) == (f"{board / 'sweeps'}: 'PWNED' is not a dataset of the spec "
                               f"({', '.join(load_spec().datasets)}); a page is written only for those")


# ---------------------------------------------------------------- fields the pages read


@pytest.mark.parametrize(("changes", "field", "problem"), [
    ({"flags": []}, "flags", "expected an object of named flags, got list"),
    ({"flags": {"masked": "yes"}}, "flags.masked", "expected an object, got str"),
    ({"flags": {"masked": {"raised": "true"}}}, "flags.masked.raised", "expected true, false or null, got 'true'"),
    ({"flags": {"masked": {"raised": True, "p_value": "0.01"}}}, "flags.masked.p_value",
     "expected a number, got '0.01'"),
    ({"entry__weights": {"repo": "alice/robust-a", "revision": 1234567}}, "entry.weights.revision",
     "expected a string, got 1234567"),
    ({"entry__paper": ["https://arxiv.org/abs/1"]}, "entry.paper", "expected a string, got ['https://arxiv.org/abs/1']"),
    ({"attacks__nattack__queries__median": "lots"}, "attacks.nattack.queries.median", "expected a number, got 'lots'"),
    ({"entry__submission": {"claimed": {"pgd": "99.9"}}}, "entry.submission.claimed.pgd",
     "expected a number (accuracy in %), got '99.9'"),
    ({"worst_case__all__subsample": "all"}, "worst_case.all.subsample", "expected an integer, got 'all'"),
])
def test_a_malformed_field_the_pages_read_is_a_one_line_error(tmp_path, lenient_loader, changes, field, problem):
    path = write_record(tmp_path, record(**changes))
    with pytest.raises(RecordError) as info:
        render_pages(tmp_path / "results", load_spec().version)
    assert str(info.value) == f"{path}: field '{field}': {problem}"


def test_a_record_without_nattack_queries_renders_without_a_query_count(tmp_path, lenient_loader):
    document = record()
    del document["attacks"]["nattack"]["queries"]
    write_record(tmp_path, document)
    page = render_pages(tmp_path / "results", load_spec().version)["fashion-mnist.md"]
    row = next(line for line in page.splitlines() if line.startswith("| robust-a | submission |"))
    assert "| 60.0 | 45.0 [40.0, 50.0] |" in row
