"""`threatbench perf` results: the goal verdicts and the committed measurement files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark.tools.perf import GOALS, PERF_SCHEMA, goal_verdicts

PERF_DIR = Path(__file__).resolve().parents[2] / "leaderboard" / "perf"


def test_goals_are_met_at_or_below_their_ratio_and_judged_only_on_a_gpu():
    ratios = {"pgd": 1.1, "nattack": 1.25, "smoothed_predict": 0.9}
    on_cpu = goal_verdicts(ratios, torch.device("cpu"))
    assert on_cpu["judged"] is False
    assert {g["measurement"]: g["met"] for g in on_cpu["goals"]} == {
        "pgd": True, "nattack": False, "smoothed_predict": True}
    assert goal_verdicts(ratios, torch.device("cuda"))["judged"] is True


@pytest.mark.parametrize("path", sorted(PERF_DIR.glob("*.json")), ids=lambda p: p.name)
def test_a_committed_perf_file_is_consistent(path):
    report = json.loads(path.read_text())
    assert report["schema"] == PERF_SCHEMA
    assert report["provenance"]["git"] and not report["provenance"]["git"].endswith("+dirty"), \
        "measure committed code: commit, then rerun threatbench perf --out"
    ratios = {a["attack"]: a["ratio_to_floor"] for a in report["attacks"]}
    ratios.update(nattack=report["nattack"]["ratio_to_floor"],
                  smoothed_predict=report["smoothed_predict"]["ratio_to_floor"])
    goals = {g["measurement"]: g for g in report["goals"]["goals"]}
    assert set(goals) == {name for name, _ in GOALS}
    for name, goal in goals.items():
        assert goal["ratio"] == round(ratios[name], 4)
        assert goal["met"] == (goal["ratio"] <= goal["at_most"])
    assert report["goals"]["judged"] == (report["provenance"]["device"] == "cuda")
