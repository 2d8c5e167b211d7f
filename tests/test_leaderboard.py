"""The generated leaderboard: deterministic, ranked by the worst case over all families, ties in
bold, quick-budget records only in the provisional table, entries with a raised masking flag never
ranked but listed under "Flagged" with their evidence, stale committed pages detected.

The records are true ones (tests/records.py): every number derived from chosen per-example bits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from records import write_true_record

from benchmark.leaderboard import LEADERBOARD_DIR, render_pages, stale_pages, write_pages
from benchmark.spec import load_spec

GOLDEN = Path(__file__).parent / "fixtures" / "leaderboard" / "fashion-mnist.md"
VERSION = load_spec().version


@pytest.fixture
def board(tmp_path) -> Path:
    write_true_record(tmp_path, "strong", clean=0.85, white_box=0.52, transfer=0.70, nattack=0.56)
    write_true_record(tmp_path, "tied", clean=0.84, white_box=0.505, transfer=0.69, nattack=0.54)
    write_true_record(tmp_path, "weak", clean=0.91, white_box=0.0, transfer=0.40, nattack=0.10,
                      above_clean=True)   # a raised flag that is not a masking flag: ranked
    write_true_record(tmp_path, "masked", clean=0.95, white_box=0.90, transfer=0.50,
                      nattack=0.90)   # transfer beats white-box: flagged, never ranked
    write_true_record(tmp_path, "masked-quick", clean=0.90, white_box=0.60, transfer=0.30, nattack=None,
                      budget="quick")
    return tmp_path


def page_of(board: Path) -> str:
    return render_pages(board / "results", VERSION)["fashion-mnist.md"]


def test_the_page_matches_the_golden_page(board):
    page = page_of(board)
    if not GOLDEN.is_file():   # first run writes it; review it and commit
        GOLDEN.write_text(page)
    assert page == GOLDEN.read_text()


def test_rows_are_sorted_by_the_worst_case_and_ties_are_bold(board):
    ranked = page_of(board).split("## Flagged")[0]
    assert ranked.index("**strong**") < ranked.index("**tied**") < ranked.index("| weak |")
    assert "| 3 | weak |" in ranked        # 0.0% over all families: not tied, not bold


def test_a_raised_non_masking_flag_is_shown_but_does_not_gate_the_ranking(board):
    page = page_of(board)
    row = next(line for line in page.splitlines() if line.startswith("| 3 | weak |"))
    assert "`adversarial_above_clean` (not masking)" in row
    assert "weak" not in page.split("## Flagged")[1].split("## Provisional")[0]


def test_a_record_with_a_raised_masking_flag_is_not_ranked_but_listed_as_flagged(board):
    ranked, rest = page_of(board).split("## Flagged (not ranked)")
    flagged, provisional = rest.split("## Provisional (not ranked)")
    assert "masked" not in ranked and "| 1 | **strong** |" in ranked
    assert ("| masked | baseline | standard | `transfer_beats_white_box` | 0 | white-box worst case correct on "
            "1200 examples where transfer worst case is not") in flagged
    assert "`single_step_beats_pgd`" not in flagged, "only raised flags are listed"
    assert "| masked | baseline | flagged: transfer_beats_white_box |" in provisional


def test_the_same_entry_without_the_flag_is_ranked_first(board):
    write_true_record(board, "masked", clean=0.95, white_box=0.90, transfer=0.90, nattack=0.90)
    page = page_of(board)
    assert "| 1 | **masked** |" in page.split("## Provisional")[0]
    assert "| masked |" not in page.split("## Flagged")[1] if "## Flagged" in page else True


def test_a_flagged_quick_record_is_listed_as_flagged_too(board):
    flagged = page_of(board).split("## Flagged (not ranked)")[1].split("## Provisional")[0]
    assert "| masked-quick | baseline | quick | `transfer_beats_white_box` | 2.1e-45 |" in flagged


def test_quick_budget_records_are_only_provisional(board):
    page = page_of(board)
    ranked, provisional = page.split("## Provisional")
    assert "| masked-quick | baseline | quick |" not in ranked.split("## Flagged")[0]
    assert ("| masked-quick | baseline | quick budget (n = 500); not run: adaptive; flagged: "
            "transfer_beats_white_box |") in provisional


def test_rendering_is_deterministic(board, tmp_path):
    first = render_pages(board / "results", VERSION)
    copy = tmp_path / "copy"
    shutil.copytree(board / "results", copy / "results")
    assert render_pages(copy / "results", VERSION) == first


def test_a_stale_page_is_detected(board):
    write_pages(board, VERSION)
    assert stale_pages(board, VERSION) == []
    write_true_record(board, "weak", clean=0.92, white_box=0.0, transfer=0.40, nattack=0.10, above_clean=True)
    assert stale_pages(board, VERSION) == ["fashion-mnist.md"]


def test_a_broken_record_fails_the_build_naming_it(board):
    path = board / "results" / "fashion-mnist" / "tied.json"
    record = json.loads(path.read_text())
    record["clean"]["accuracy"] = "84%"
    path.write_text(json.dumps(record))
    from benchmark.results import RecordError
    with pytest.raises(RecordError, match="tied.json: field 'clean.accuracy'"):
        render_pages(board / "results", VERSION)


def test_two_records_of_one_entry_name_and_budget_are_refused(board):
    shutil.copy(board / "results" / "fashion-mnist" / "tied.json", board / "results" / "fashion-mnist" / "tied2.json")
    shutil.copy(board / "results" / "fashion-mnist" / "tied.examples.json",
                board / "results" / "fashion-mnist" / "tied2.examples.json")
    from benchmark.results import RecordError
    with pytest.raises(RecordError, match="entry 'tied' already has a standard-budget fashion-mnist record"):
        render_pages(board / "results", VERSION)


def test_submitters_claims_are_shown_beside_the_measurement_never_as_measured(board):
    path = board / "results" / "fashion-mnist" / "strong.json"
    record = json.loads(path.read_text())
    record["entry"].update(kind="submission", submission={"claimed": {"source": "Table 2", "clean": 86.0,
                                                                       "pgd": 61.0, "transfer": 75.0}})
    path.write_text(json.dumps(record))
    page = page_of(board)
    claims = page.split("## Submitters' claims")[1]
    assert "| strong | `pgd` | 61 | 52.0 [50.2, 53.8] (standard) | Table 2 |" in claims
    assert "| strong | `clean` | 86 | 85.0 " in claims and "| strong | `transfer` | 75 | 70.0 " in claims
    assert "| 1 | **strong** | submission |" in page


def test_the_committed_leaderboard_is_up_to_date():
    assert stale_pages(LEADERBOARD_DIR, load_spec().version) == [], \
        "run `threatbench leaderboard` and commit the pages"
