"""The generated leaderboard: deterministic, ranked by the worst case over all families, ties in
bold, quick-budget records only in the provisional table, entries with a raised masking flag never
ranked but listed under "Flagged" with their evidence, stale committed pages detected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.leaderboard import LEADERBOARD_DIR, render_pages, stale_pages, write_pages
from benchmark.results import Outcomes, write_result
from benchmark.spec import load_spec
from benchmark.stats import wilson_interval

GOLDEN = Path(__file__).parent / "fixtures" / "leaderboard" / "fashion-mnist.md"
N = 1000


def summary(correct: int, n: int = N) -> dict:
    return {"accuracy": correct / n, "correct": correct, "n": n, "interval": list(wilson_interval(correct, n))}


def bits(correct: int, n: int = N) -> np.ndarray:
    row = np.zeros((1, n), dtype=bool)
    row[0, :correct] = True
    return row


def write_fixture(directory: Path, name: str, *, clean: int, pgd: int, transfer: int, nattack: int | None,
                  budget: str = "full", kind: str = "baseline", flags: dict | None = None) -> None:
    """A complete record whose per-example file agrees with its numbers (prefix-correct examples)."""
    all_correct = min(clean, pgd, transfer, N if nattack is None else nattack)
    attacks = {"pgd": {"family": "white_box", **summary(pgd)},
               "transfer/B/fgsm": {"family": "transfer", **summary(transfer)}}
    outcomes = {"clean": Outcomes(bits(clean)), "pgd": Outcomes(bits(pgd)),
                "transfer/B/fgsm": Outcomes(bits(transfer))}
    if nattack is not None:
        attacks["nattack"] = {"family": "adaptive", **summary(nattack),
                              "queries": {"median": 1234.0, "mean": 1500.0, "max": 9000, "total": 1500000}}
        outcomes["nattack"] = Outcomes(bits(nattack), np.full(N, 1500))
    run = {"status": "run"}
    record = {
        "schema": "threatbench.result/1",
        "entry": {"name": name, "kind": kind, "architecture": "mnist_a", "paper": "https://arxiv.org/abs/1705.07204",
                  "weights": {"file": f"{name}.safetensors", "sha256": (name.encode().hex() * 64)[:64]}},
        "dataset": "fashion-mnist", "spec": {"version": "1.0.0", "sha256": "0" * 64},
        "threat_model": {"norm": "linf", "eps": 0.1}, "budget": budget, "n": N, "nattack_n": N,
        "subset_sha256": "1" * 64, "seed": 0, "clean": summary(clean), "attacks": attacks,
        "families": {"white_box": run, "transfer": run,
                     "adaptive": run if nattack is not None else {"status": "not_run", "reason": "not requested"}},
        "worst_case": {"white_box": summary(min(clean, pgd)), "transfer": summary(min(clean, transfer)),
                       "adaptive": None if nattack is None else summary(min(clean, nattack)),
                       "all": None if nattack is None else summary(all_correct)},
        "flags": flags or {"transfer_beats_white_box": {"raised": False}, "rand_fgsm_beats_fgsm": {"raised": None}},
        "provenance": {"device": "cpu"}, "examples_file": f"{name}.examples.json",
    }
    path = directory / "results" / "fashion-mnist" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, record, outcomes)


MASKED_FLAG = {"raised": True, "masking": True, "p_value": 2.0 ** -12, "compared": ["pgd", "transfer/B/fgsm"],
               "discordant": [12, 0], "comparisons": 1,
               "evidence": "pgd correct on 12 examples where transfer/B/fgsm is not, transfer/B/fgsm on 0 "
                           "where pgd is not (p = 0.000244) (exact paired test, one-sided; p < 0.01)"}


@pytest.fixture
def board(tmp_path) -> Path:
    write_fixture(tmp_path, "strong", clean=850, pgd=520, transfer=700, nattack=560)
    write_fixture(tmp_path, "tied", clean=840, pgd=505, transfer=690, nattack=540)
    write_fixture(tmp_path, "weak", clean=910, pgd=0, transfer=400, nattack=100,
                  flags={"adversarial_above_clean": {"raised": True}})   # not a masking flag: ranked
    write_fixture(tmp_path, "masked", clean=950, pgd=900, transfer=890, nattack=900,
                  flags={"transfer_beats_white_box": MASKED_FLAG})   # the best numbers, but flagged
    write_fixture(tmp_path, "masked-quick", clean=900, pgd=600, transfer=300, nattack=None, budget="quick")
    return tmp_path


def test_the_page_matches_the_golden_page(board):
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    if not GOLDEN.is_file():   # first run writes it; review it and commit
        GOLDEN.write_text(page)
    assert page == GOLDEN.read_text()


def test_rows_are_sorted_by_the_worst_case_and_ties_are_bold(board):
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    ranked = page.split("## Provisional")[0]
    assert ranked.index("**strong**") < ranked.index("**tied**") < ranked.index("| weak |")
    assert "| 3 | weak |" in ranked        # 10.0% all-families: not tied, not bold


def test_a_raised_non_masking_flag_is_shown_but_does_not_gate_the_ranking(board):
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    row = next(line for line in page.splitlines() if line.startswith("| 3 | weak |"))
    assert "`adversarial_above_clean` (not masking)" in row
    assert "weak" not in page.split("## Flagged")[1].split("## Provisional")[0]


def test_a_full_record_with_a_raised_masking_flag_is_not_ranked_but_listed_as_flagged(board):
    write_fixture(board, "masked", clean=950, pgd=900, transfer=890, nattack=900,
                  flags={"transfer_beats_white_box": MASKED_FLAG,
                         "single_step_beats_pgd": {"raised": False, "masking": True, "p_value": 1.0,
                                                   "evidence": "-"}})
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    ranked, rest = page.split("## Flagged (not ranked)")
    flagged, provisional = rest.split("## Provisional (not ranked)")
    assert "masked" not in ranked and "| 1 | **strong** |" in ranked, "the best worst case is not ranked"
    assert ("| masked | baseline | full | `transfer_beats_white_box` | 0.00024 | pgd correct on 12 examples "
            "where transfer/B/fgsm is not") in flagged
    assert "`single_step_beats_pgd`" not in flagged, "only raised flags are listed"
    assert "| masked | baseline | flagged: transfer_beats_white_box |" in provisional


def test_the_same_record_without_the_flag_is_ranked(board):
    write_fixture(board, "masked", clean=950, pgd=900, transfer=890, nattack=900,
                  flags={"transfer_beats_white_box": {**MASKED_FLAG, "raised": False, "p_value": 1.0}})
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    assert "| 1 | **masked** |" in page.split("## Provisional")[0]
    assert "## Flagged" not in page


def test_old_records_without_the_masking_key_are_gated_by_the_registry(board):
    """Spec 1.0.0 records hold flags as {raised, evidence}: the flag's registry entry decides."""
    write_fixture(board, "old", clean=950, pgd=900, transfer=890, nattack=900,
                  flags={"single_step_beats_pgd": {"raised": True, "evidence": "fgsm below pgd"}})
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    assert "| old | baseline | full | `single_step_beats_pgd` | - | fgsm below pgd |" in page
    assert "| 1 | **strong** |" in page


def test_a_flagged_quick_record_is_listed_as_flagged_too(board):
    write_fixture(board, "noisy-quick", clean=900, pgd=600, transfer=700, nattack=650, budget="quick",
                  flags={"randomness_undeclared": {"raised": True, "masking": True, "p_value": None,
                                                   "evidence": "two forward passes differ"}})
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    flagged = page.split("## Flagged (not ranked)")[1].split("## Provisional")[0]
    assert ("| noisy-quick | baseline | quick | `randomness_undeclared` | - | two forward passes differ |"
            in flagged)
    assert "| noisy-quick | baseline | quick budget (n = 1000); flagged: randomness_undeclared |" in page


def test_quick_budget_records_are_only_provisional(board):
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    ranked, provisional = page.split("## Provisional")
    assert "masked-quick" not in ranked
    assert "| masked-quick | baseline | quick budget (n = 1000); not run: adaptive |" in provisional


def test_rendering_is_deterministic(board, tmp_path):
    first = render_pages(board / "results", "1.0.0")
    copy = tmp_path / "copy"
    shutil.copytree(board / "results", copy / "results")
    assert render_pages(copy / "results", "1.0.0") == first


def test_a_stale_page_is_detected(board):
    write_pages(board, "1.0.0")
    assert stale_pages(board, "1.0.0") == []
    write_fixture(board, "weak", clean=910, pgd=0, transfer=400, nattack=200)
    assert stale_pages(board, "1.0.0") == ["fashion-mnist.md"]


def test_a_broken_record_fails_the_build_naming_it(board):
    path = board / "results" / "fashion-mnist" / "tied.json"
    record = json.loads(path.read_text())
    record["clean"]["accuracy"] = "84%"
    path.write_text(json.dumps(record))
    from benchmark.results import RecordError
    with pytest.raises(RecordError, match="tied.json: field 'clean.accuracy'"):
        render_pages(board / "results", "1.0.0")


def test_two_records_of_one_entry_name_and_budget_are_refused(board):
    shutil.copy(board / "results" / "fashion-mnist" / "tied.json", board / "results" / "fashion-mnist" / "tied2.json")
    shutil.copy(board / "results" / "fashion-mnist" / "tied.examples.json",
                board / "results" / "fashion-mnist" / "tied2.examples.json")
    from benchmark.results import RecordError
    with pytest.raises(RecordError, match="entry 'tied' already has a full-budget fashion-mnist record"):
        render_pages(board / "results", "1.0.0")


def test_submitters_claims_are_shown_beside_the_measurement_never_as_measured(board):
    path = board / "results" / "fashion-mnist" / "strong.json"
    record = json.loads(path.read_text())
    record["entry"].update(kind="submission", submission={"claimed": {"source": "Table 2", "clean": 86.0,
                                                                       "pgd": 61.0, "transfer": 75.0}})
    path.write_text(json.dumps(record))
    page = render_pages(board / "results", "1.0.0")["fashion-mnist.md"]
    claims = page.split("## Submitters' claims")[1]
    assert "| strong | `pgd` | 61 | 52.0 [48.9, 55.1] (full) | Table 2 |" in claims
    assert "| strong | `clean` | 86 | 85.0 " in claims and "| strong | `transfer` | 75 | 70.0 " in claims
    assert "| 1 | **strong** | submission |" in page


def test_the_committed_leaderboard_is_up_to_date():
    assert stale_pages(LEADERBOARD_DIR, load_spec().version) == [], \
        "run `threatbench leaderboard` and commit the pages"
