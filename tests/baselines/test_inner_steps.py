"""The inner-steps study's rule and page (baselines.inner_steps): the fewest steps not significantly
below the best; the committed page is what the committed evidence gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baselines.inner_steps import DEFAULT_DIR, PAGE, below_best_p, chosen_steps, render_page


def test_the_fewest_steps_not_significantly_below_the_best_are_chosen():
    points = [{"steps": 2, "pgd": 0.40}, {"steps": 4, "pgd": 0.55}, {"steps": 7, "pgd": 0.57},
              {"steps": 10, "pgd": 0.58}]
    assert chosen_steps(points, 1000) == 4      # 55% [51.9, 58.1] overlaps 58% [54.9, 61.0]; 40% does not
    assert chosen_steps(points, 100) == 2       # at n = 100 nothing is distinguishable from the best
    assert chosen_steps([{"steps": 7, "pgd": 0.1}], 1000) == 7


def _point(steps: int, correct: list[int], repeats: int = 1) -> dict:
    return {"steps": steps, "pgd": sum(correct) / (repeats * len(correct)), "repeats": repeats,
            "pgd_correct": correct}


def test_with_per_example_outcomes_the_choice_uses_the_exact_paired_test():
    # 1000 images; 4 steps = 2 steps plus 60 more images correct, 7 steps = 4 steps plus 3 more: against
    # the best (7), 2 steps lose 63 : 0 (p = 2**-63) and 4 steps 3 : 0 (p = 1/8, not significant).
    base = [1] * 500 + [0] * 500
    four = [1] * 560 + [0] * 440
    seven = [1] * 563 + [0] * 437
    points = [_point(2, base), _point(4, four), _point(7, seven)]
    assert below_best_p(points[0], points[2]) == pytest.approx(2.0 ** -63)
    assert below_best_p(points[1], points[2]) == pytest.approx(1 / 8)
    assert chosen_steps(points, 1000) == 4
    close = [_point(2, [1] * 545 + [0] * 455), _point(7, seven)]   # 54.5% vs 56.3%: Wilson overlaps
    assert chosen_steps([{k: v for k, v in p.items() if k != "pgd_correct"} for p in close], 1000) == 2
    assert chosen_steps(close, 1000) == 7                            # 18 : 0 discordant, p = 2**-18


def test_a_noisy_model_is_compared_on_fractions_over_repeats():
    best, other = _point(7, [5, 5, 5, 5, 5, 5, 5, 5], repeats=5), _point(2, [4, 4, 4, 4, 4, 4, 4, 4], repeats=5)
    assert below_best_p(other, best) == pytest.approx(2.0 ** -8)   # every image a little worse: 8 : 0
    assert chosen_steps([other, best], 8) == 7


def test_the_page_lists_every_point_and_the_choice(tmp_path):
    study = {"recipe": "fashion-mnist/A_madry.toml", "train_images": 20000, "epochs": 1, "eval_n": 1000,
             "points": [{"steps": 2, "step_size": 0.125, "train_seconds": 120.0, "clean": 0.8, "pgd": 0.40},
                        {"steps": 7, "step_size": 0.0357, "train_seconds": 300.0, "clean": 0.78, "pgd": 0.57}]}
    (tmp_path / "A_madry.json").write_text(json.dumps(study))
    page = render_page(tmp_path)
    assert "| 2 | 0.125 | 2.0 | 80.0 | 40.0 [37.0, 43.1] | n/a |" in page
    assert "Fewest steps not significantly below the best (overlapping Wilson intervals" in page
    assert "**7**." in page


def test_the_page_shows_the_paired_p_values(tmp_path):
    study = {"recipe": "fashion-mnist/A_trades.toml", "train_images": 20000, "epochs": 1, "eval_n": 4,
             "points": [{**_point(2, [1, 0, 0, 0]), "step_size": 0.125, "train_seconds": 60.0, "clean": 0.9},
                        {**_point(4, [1, 1, 1, 1]), "step_size": 0.0625, "train_seconds": 90.0, "clean": 0.9}]}
    (tmp_path / "A_trades.json").write_text(json.dumps(study))
    page = render_page(tmp_path)
    assert "| 2 | 0.125 | 1.0 | 90.0 | 25.0 " in page and "| 0.12 |" in page   # 3 : 0, p = 1/8
    assert "| 4 | 0.0625 | 1.5 | 90.0 | 100.0 [51.0, 100.0] | best |" in page
    assert "(exact paired test): **2**." in page


def test_the_committed_page_matches_the_committed_evidence():
    if not any(Path(DEFAULT_DIR).glob("*.json")):
        pytest.skip("no inner-steps study committed in leaderboard/diagnostics/inner-steps/ yet "
                    "(python -m baselines.inner_steps fashion-mnist/A_madry.toml ...)")
    assert PAGE.read_text() == render_page(), "run python -m baselines.inner_steps --page and commit it"
