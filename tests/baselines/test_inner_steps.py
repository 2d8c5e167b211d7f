"""The inner-steps study's rule and page (baselines.inner_steps): the fewest steps not significantly
below the best; the committed page is what the committed evidence gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baselines.inner_steps import DEFAULT_DIR, PAGE, chosen_steps, render_page


def test_the_fewest_steps_not_significantly_below_the_best_are_chosen():
    points = [{"steps": 2, "pgd": 0.40}, {"steps": 4, "pgd": 0.55}, {"steps": 7, "pgd": 0.57},
              {"steps": 10, "pgd": 0.58}]
    assert chosen_steps(points, 1000) == 4      # 55% [51.9, 58.1] overlaps 58% [54.9, 61.0]; 40% does not
    assert chosen_steps(points, 100) == 2       # at n = 100 nothing is distinguishable from the best
    assert chosen_steps([{"steps": 7, "pgd": 0.1}], 1000) == 7


def test_the_page_lists_every_point_and_the_choice(tmp_path):
    study = {"recipe": "fashion-mnist/A_madry.toml", "train_images": 20000, "epochs": 1, "eval_n": 1000,
             "points": [{"steps": 2, "step_size": 0.125, "train_seconds": 120.0, "clean": 0.8, "pgd": 0.40},
                        {"steps": 7, "step_size": 0.0357, "train_seconds": 300.0, "clean": 0.78, "pgd": 0.57}]}
    (tmp_path / "A_madry.json").write_text(json.dumps(study))
    page = render_page(tmp_path)
    assert "| 2 | 0.125 | 2.0 | 80.0 | 40.0 [37.0, 43.1] |" in page
    assert "Fewest steps not significantly below the best: **7**." in page


def test_the_committed_page_matches_the_committed_evidence():
    if not any(Path(DEFAULT_DIR).glob("*.json")):
        pytest.skip("no inner-steps study committed in leaderboard/diagnostics/inner-steps/ yet "
                    "(python -m baselines.inner_steps fashion-mnist/A_madry.toml ...)")
    assert PAGE.read_text() == render_page(), "run python -m baselines.inner_steps --page and commit it"
