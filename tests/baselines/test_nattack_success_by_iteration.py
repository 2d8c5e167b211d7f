"""The NAttack success-by-iteration study (baselines.nattack_success_by_iteration): the cap rule, which
weights each target's evidence was measured on, and that the committed page is what the committed
evidence gives."""

from __future__ import annotations

import json

import numpy as np

from baselines import nattack_success_by_iteration as study
from baselines.nattack_variants import weights_sha256, zoo_entry_of
from baselines.zoo import load_zoo


def test_the_cap_is_the_smallest_that_keeps_95_percent_of_the_successes():
    assert study.smallest_cap([2, 2, 4, 60, 70]) == 70            # ceil(0.95 * 5) = 5: all of them
    assert study.smallest_cap(list(range(1, 21))) == 19           # 19 of 20 is 95%
    assert study.smallest_cap([]) is None


def test_constructed_targets_name_the_zoo_weights_they_are_built_from():
    assert zoo_entry_of("A x1024 (last layer)") == "A"
    assert zoo_entry_of("D binarized") == "D"
    assert zoo_entry_of("A_adv") == "A_adv"
    assert weights_sha256("A binarized") == load_zoo("fashion-mnist").entry("A").sha256


def test_the_page_says_when_evidence_is_not_from_the_current_weights():
    current = weights_sha256("A_adv")
    assert "(current)" in study.weights_cell("A_adv", {"weights_sha256": current})
    assert "not the zoo's current weights" in study.weights_cell("A_adv", {"weights_sha256": "0" * 64})
    assert "not recorded" in study.weights_cell("A_adv", {})


def test_new_weights_start_a_target_afresh(tmp_path, monkeypatch):
    out = tmp_path / "A_adv.json"
    old = {"target": "A_adv", "n": 8, "max_iterations": 500, "seed": 0, "weights_sha256": "old",
           "survivors": [3], "repeats": 1, "examples": {"3": {"success": True, "iterations": 7, "queries": 1}}}
    out.write_text(json.dumps(old))
    monkeypatch.setattr(study, "targets", lambda names: {name: None for name in names})
    monkeypatch.setattr(study, "load_evaluation_set", lambda dataset, n: None)
    monkeypatch.setattr(study, "survivors", lambda defense, n, seed: (np.array([], dtype=int), 1))
    monkeypatch.setattr(study, "weights_sha256", lambda name: "old")
    assert study.measure("A_adv", 8, 500, 0, out)["examples"] == old["examples"]   # same weights: resumes
    monkeypatch.setattr(study, "weights_sha256", lambda name: "new")
    state = study.measure("A_adv", 8, 500, 0, out)
    assert state["weights_sha256"] == "new" and state["examples"] == {} and state["survivors"] == []


def test_the_committed_page_is_what_the_committed_evidence_gives():
    assert study.PAGE.read_text() == study.page(study.load_states(study.DEFAULT_DIR), 500)


def test_evidence_kept_elsewhere_gets_its_page_beside_it(tmp_path):
    committed = study.PAGE.read_text()
    source = study.DEFAULT_DIR / "D.json"
    (tmp_path / "D.json").write_text(source.read_text())
    study.main(["--page", "--dir", str(tmp_path)])
    assert (tmp_path / study.PAGE.name).is_file() and (tmp_path / study.PLOT.name).is_file()
    assert study.PAGE.read_text() == committed
