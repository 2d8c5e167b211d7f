"""The generated leaderboard: deterministic, ranked by the worst case over all families, ties in
bold, quick-budget records only in the provisional table, entries with a raised masking flag never
ranked but listed under "Flagged" with their evidence, stale committed pages detected.

The records are true ones (tests/records.py): every number derived from chosen per-example bits."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from records import write_true_record

from benchmark.board.leaderboard import LEADERBOARD_DIR, render_pages, stale_pages, write_pages
from benchmark.spec import load_spec

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "leaderboard" / "fashion-mnist.md"
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
    assert ranked.index("**strong**") < ranked.index("**tied**") < ranked.index("</a>weak |")
    assert '| 3 | <a id="fashion-mnist-standard-weak"></a>weak |' in ranked   # 0.0%: not tied, not bold


def test_a_raised_non_masking_flag_is_shown_but_does_not_gate_the_ranking(board):
    page = page_of(board)
    row = next(line for line in page.splitlines() if line.startswith('| 3 | <a id="fashion-mnist-standard-weak"></a>weak |'))
    assert "`adversarial_above_clean` (not masking)" in row
    assert "weak" not in page.split("## Flagged")[1].split("## Provisional")[0]


def test_a_record_with_a_raised_masking_flag_is_not_ranked_but_listed_as_flagged(board):
    ranked, rest = page_of(board).split("## Flagged (not ranked)")
    flagged, provisional = rest.split("## Provisional (not ranked)")
    assert "masked" not in ranked and '| 1 | <a id="fashion-mnist-standard-strong"></a>**strong** |' in ranked
    assert ("| masked | baseline | standard | `transfer_beats_white_box` | 0 | white-box worst case correct on "
            "1200 examples where transfer worst case is not") in flagged
    assert "`single_step_beats_pgd`" not in flagged, "only raised flags are listed"
    assert "| masked | baseline | flagged: transfer_beats_white_box |" in provisional


def test_the_same_entry_without_the_flag_is_ranked_first(board):
    write_true_record(board, "masked", clean=0.95, white_box=0.90, transfer=0.90, nattack=0.90)
    page = page_of(board)
    assert '| 1 | <a id="fashion-mnist-standard-masked"></a>**masked** |' in page.split("## Provisional")[0]
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
    from benchmark.evaluation.results import RecordError
    with pytest.raises(RecordError, match="tied.json: field 'clean.accuracy'"):
        render_pages(board / "results", VERSION)


def test_two_records_of_one_entry_name_and_budget_are_refused(board):
    shutil.copy(board / "results" / "fashion-mnist" / "tied.json", board / "results" / "fashion-mnist" / "tied2.json")
    shutil.copy(board / "results" / "fashion-mnist" / "tied.examples.json",
                board / "results" / "fashion-mnist" / "tied2.examples.json")
    from benchmark.evaluation.results import RecordError
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
    assert '| 1 | <a id="fashion-mnist-standard-strong"></a>**strong** | submission |' in page


def test_the_committed_leaderboard_is_up_to_date():
    assert stale_pages(LEADERBOARD_DIR, load_spec().version) == [], \
        "run `threatbench leaderboard` and commit the pages"


# ---------------------------------------------------------------- release, status, anchors, n

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CIFAR_REFERENCES = """
schema = "threatbench.references/1"
dataset = "cifar10"
[[references]]
name = "pinned"
role = "defense"
architecture = "wrn34_10"
paper = "https://arxiv.org/abs/1"
source = "Table 1"
hub = { repo = "alice/pinned", revision = "909cbadce5c7ab2fa85d7a37d352c350dc2a14b3", file = "model.safetensors" }
claimed = [ { metric = "clean", threatbench = "clean", top1 = 84.9 } ]
[[references]]
name = "unpinned"
role = "defense"
architecture = "wrn34_10"
paper = "https://arxiv.org/abs/2"
source = "Table 2"
revision_note = "a pickled checkpoint, not on the Hub"
claimed = [ { metric = "clean", threatbench = "clean", top1 = 80.0 } ]
"""


def set_provenance(board: Path, name: str, **provenance) -> None:
    path = board / "results" / "fashion-mnist" / f"{name}.json"
    record = json.loads(path.read_text())
    record["provenance"].update(provenance)
    path.write_text(json.dumps(record))


def line_of(page: str, start: str) -> str:
    return next(line for line in page.splitlines() if line.startswith(start))


def test_every_page_opens_with_the_release_and_the_date_of_its_newest_record(board):
    from benchmark import __version__

    set_provenance(board, "strong", date="2026-12-01T23:59:59-02:00")   # 2026-12-02 in UTC
    set_provenance(board, "weak", date="2026-11-20T08:00:00+00:00")
    (board / "references").mkdir()
    (board / "references" / "cifar10.toml").write_text(CIFAR_REFERENCES)
    pages = render_pages(board / "results", VERSION)
    release = f"**Release:** threatbench {__version__}, spec {VERSION}, data as of 2026-12-02"
    assert pages["fashion-mnist.md"].splitlines()[4] == f"{release} (the newest record on this page)."
    assert pages["cifar10.md"].splitlines()[4] == f"{release} (the newest record of the leaderboard; none on this page)."
    assert pages["README.md"].splitlines()[4] == f"{release} (the newest record of the leaderboard)."
    set_provenance(board, "weak", date="2026-12-03T00:00:00+00:00")
    assert "data as of 2026-12-03" in render_pages(board / "results", VERSION)["fashion-mnist.md"].splitlines()[4]


def test_a_page_whose_records_carry_no_date_says_so(board):
    assert page_of(board).splitlines()[4] == f"**Release:** threatbench 0.2.0, spec {VERSION}, no dated record yet."


def test_a_malformed_record_date_is_a_one_line_error_naming_it(board):
    from benchmark.evaluation.results import RecordError

    set_provenance(board, "tied", date="last Tuesday")
    with pytest.raises(RecordError, match=r"tied.json: field 'provenance.date': expected an ISO 8601 date and "
                                          r"time, got 'last Tuesday'"):
        render_pages(board / "results", VERSION)


def test_every_committed_page_opens_with_the_release_line_and_a_dataset_page_with_its_status():
    from benchmark.version import release

    for page in sorted(LEADERBOARD_DIR.glob("*.md")):
        lines = page.read_text().splitlines()
        assert lines[4].startswith(f"**Release:** {release(VERSION)}, "), page.name
        assert page.name == "README.md" or lines[6].startswith("**Status:** Measured under spec ") \
            or lines[6].startswith("**Status:** No "), page.name


def test_each_ranked_row_has_a_stable_anchor_and_links_its_record_and_judge_commit(board):
    set_provenance(board, "strong", git=COMMIT)
    set_provenance(board, "tied", git=COMMIT + "+dirty")
    page = page_of(board)
    assert line_of(page, "| 1 |").endswith(
        f"| [record](results/fashion-mnist/strong.json), judge `{COMMIT[:12]}` |")
    assert line_of(page, "| 2 |").endswith(
        f"| [record](results/fashion-mnist/tied.json), judge `{COMMIT[:12]}` with uncommitted changes |")
    assert line_of(page, "| 3 |").endswith("| [record](results/fashion-mnist/weak.json), judge commit not recorded |")
    anchors = re.findall(r'<a id="([^"]*)"></a>', page)
    assert anchors == ["fashion-mnist-standard-strong", "fashion-mnist-standard-tied", "fashion-mnist-standard-weak"]
    provisional = page.split("## Provisional")[1]
    assert "<a id=" not in provisional and "[record]" not in provisional, "only ranked rows are citable"
    write_true_record(board, "weak", clean=0.91, white_box=0.0, transfer=0.40, nattack=0.10, above_clean=True)
    assert re.findall(r'<a id="([^"]*)"></a>', page_of(board)) == anchors, "the same on every regeneration"


def test_an_anchor_holds_only_safe_characters_and_two_names_never_share_one():
    from benchmark.board.record_fields import row_anchor

    def anchor(name: str) -> str:
        return row_anchor({"dataset": "fashion-mnist", "budget": "standard", "entry": {"name": name}})

    assert anchor("A_adv-ens") == "fashion-mnist-standard-A_adv-ens"
    hostile = ['x" onmouseover="alert(1)', "a.b", "a-b", "a b", "<script>", "ü", "\u202e99.9", "a/../b"]
    anchors = [anchor(name) for name in hostile]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", a) for a in anchors), anchors
    assert len(set(anchors)) == len(hostile)
    assert anchor("a.b") == f"fashion-mnist-standard-a-b-{hashlib.sha256(b'a.b').hexdigest()[:8]}"


def test_a_hostile_entry_name_gets_a_safe_anchor_and_no_record_link(tmp_path):
    name = 'x" onmouseover="alert(1)'
    write_true_record(tmp_path, name, clean=0.85, white_box=0.52, transfer=0.70, nattack=0.56)
    row = line_of(page_of(tmp_path), "| 1 |")
    assert re.fullmatch(r'\| 1 \| <a id="fashion-mnist-standard-x-onmouseover-alert-1-[0-9a-f]{8}"></a>\*\*x" '
                        r'onmouseover="alert\(1\)\*\* \|.*', row), row
    assert row.endswith("| record, judge commit not recorded |"), "a file name outside [A-Za-z0-9_.-] is not linked"


def test_every_headline_number_shows_its_own_n(board):
    """The ranking key stands on n and the NAttack subsample (spec v2), and a spec v1 key on its first
    `nattack_n` examples only: the column beside it says which, in every table that shows a key."""
    from benchmark.board.cells import KEY_SIZE
    from benchmark.evaluation.record_check import load_record

    page = page_of(board)
    for header in (line for line in page.splitlines() if "worst over all families [95% CI]" in line):
        cells = [cell.strip() for cell in header.split("|")]
        assert cells[cells.index("worst over all families [95% CI]") + 1] == KEY_SIZE
    strong = load_record(board / "results" / "fashion-mnist" / "strong.json")["worst_case"]["all"]
    assert (strong["n"], strong["subsample"], strong["method"]) == (3000, 500, "two-phase")
    assert "| 52.0 [49.0, 54.0] | 3000 (500) |" in line_of(page, "| 1 |")
    v1 = LEADERBOARD_DIR / "results" / "fashion-mnist" / "spec-1.0.0" / "A_adv-quick.json"
    key = load_record(v1)["worst_case"]["all"]
    assert (key["n"], load_record(v1)["n"]) == (50, 500)
    shutil.copytree(v1.parent, board / "results" / "fashion-mnist" / "spec-1.0.0")
    superseded = page_of(board).split("## Superseded records")[1]
    assert "| A_adv | 1.0.0 | quick | 84.0 | 59.0 | 66.0 (15006 q) | 50.0 [36.6, 63.4] | 50 of 500 | none |" in superseded


def test_every_page_has_a_status_line_saying_what_is_measured_what_is_claimed_and_why(board):
    (board / "references").mkdir()
    (board / "references" / "cifar10.toml").write_text(CIFAR_REFERENCES)
    pages = render_pages(board / "results", VERSION)
    assert pages["fashion-mnist.md"].splitlines()[6] == (
        f"**Status:** Measured under spec {VERSION}: 3 entries ranked in the `standard` budget; no `full`-budget "
        "record yet; 2 provisional (quick, incomplete or flagged; 2 flagged). Claimed only: none.")
    assert pages["cifar10.md"].splitlines()[6] == (
        f"**Status:** No full-budget record with all three families and no raised masking flag yet: nothing is "
        f"ranked. Measured under spec {VERSION}: nothing yet. Claimed only: 2 reference entries with their "
        "papers' own numbers; 1 has no weights pinned at a Hub revision, which an evaluation needs; 1 is pinned "
        "but not evaluated yet (notes under \"Reference entries\").")
    for name, page in pages.items():
        assert name == "README.md" or page.splitlines()[6].startswith("**Status:** "), name


def test_a_dataset_whose_records_are_all_provisional_says_why_nothing_is_ranked(tmp_path):
    write_true_record(tmp_path, "quick-one", clean=0.9, white_box=0.5, transfer=0.6, nattack=0.5, budget="quick")
    write_true_record(tmp_path, "no-nattack", clean=0.9, white_box=0.5, transfer=0.6, nattack=None)
    status = page_of(tmp_path).splitlines()[6]
    assert status.startswith("**Status:** No standard or full-budget record with all three families and no "
                             "raised masking flag yet: nothing is ranked. ")
    assert ("its `standard`-budget record is not rankable; no `full`-budget record yet; 2 provisional "
            "(quick, incomplete or flagged; 0 flagged)") in status


def test_the_index_says_in_words_what_each_dataset_measures_never_zero_columns(board):
    (board / "references").mkdir()
    (board / "references" / "cifar10.toml").write_text(CIFAR_REFERENCES)
    index = render_pages(board / "results", VERSION)["README.md"]
    assert f"| dataset | measured (spec {VERSION}) | claimed only |" in index
    assert "| [cifar10](cifar10.md) | nothing yet | 2 reference entries |" in index
    assert ("| [fashion-mnist](fashion-mnist.md) | 3 entries ranked in the `standard` budget; no `full`-budget "
            "record yet; 2 provisional (quick, incomplete or flagged; 2 flagged) | none |") in index
    assert "| 0 |" not in index
