"""Records are evidence, not claims: a committed record, tampered as an attacker would, is refused
on load (benchmark.evaluation.record_verify) and by `threatbench leaderboard --check` (which also re-predicts
the clean bits, benchmark.tools.regression.check_clean_bits)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from records import rederive

from benchmark.cli import main
from benchmark.evaluation.record_check import load_record
from benchmark.evaluation.results import (
    RecordError,
    examples_document,
    examples_path,
    read_outcomes,
)
from benchmark.spec import load_spec

RESULTS = Path(__file__).resolve().parents[2] / "leaderboard" / "results"
CURRENT = load_spec().version


def _current_records() -> list[Path]:
    records = []
    for path in sorted(RESULTS.glob("*/*.json")):
        if not path.name.endswith(".examples.json") and json.loads(path.read_text())["spec"]["version"] == CURRENT:
            records.append(path)
    return sorted(records, key=lambda p: (not p.name.startswith("D-"), p.name))   # D: the smallest model


def _copy(source: Path, directory: Path) -> Path:
    target = directory / "results" / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    shutil.copy(examples_path(source), examples_path(target))
    return target


@pytest.fixture
def record_copy(tmp_path) -> Path:
    records = _current_records()
    if not records:
        pytest.skip(f"no committed record of spec {CURRENT} under leaderboard/results")
    return _copy(records[0], tmp_path)


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _key(record):
    return record["worst_case"]["all"]


TAMPERED = [
    ("budget raised to full", lambda r: r.update(budget="full"), "field 'n': 3000, but the full budget's n is"),
    ("ranking key 98.0 [90.0, 100.0]",
     lambda r: _key(r).update(accuracy=0.98, interval=[0.9, 1.0]),
     "field 'worst_case.all.accuracy': 0.98, but the per-example outcomes give"),
    ("a correct count raised", lambda r: r["attacks"]["pgd"].update(correct=r["attacks"]["pgd"]["correct"] + 50),
     "field 'attacks.pgd.correct'"),
    ("clean accuracy raised", lambda r: r["clean"].update(accuracy=r["clean"]["accuracy"] + 0.01),
     "field 'clean.accuracy'"),
    ("an interval widened", lambda r: r["attacks"]["fgsm"].update(
        interval=[r["attacks"]["fgsm"]["interval"][0] - 0.05, r["attacks"]["fgsm"]["interval"][1]]),
     "field 'attacks.fgsm.interval[0]'"),
    ("a repeats key added", lambda r: r["clean"].update(repeats=5), "field 'clean.repeats': 5, but the per-example"),
    ("flags emptied", lambda r: r.update(flags={}), "field 'flags."),
    ("a raised flag lowered", lambda r: r["flags"]["single_step_beats_pgd"].update(raised=not r["flags"][
        "single_step_beats_pgd"]["raised"]), "field 'flags.single_step_beats_pgd.raised'"),
    ("the cascade edited", lambda r: r["cascade"][-1].update(broken=0), "field 'cascade[3].broken'"),
    ("an unknown key", lambda r: r.update(verified_by="the authors"),
     "field 'verified_by': not a field of the record format"),
    ("an unknown measurement key", lambda r: r["attacks"]["pgd"].update(note="strongest"),
     "field 'attacks.pgd.note': not a field of the record format"),
    ("a spec version that does not exist", lambda r: r["spec"].update(version="9.9.9"),
     "field 'spec': version '9.9.9' is not a spec this threatbench knows"),
    ("another spec's sha256", lambda r: r["spec"].update(sha256="0" * 64),
     "field 'spec': sha256 000000000000... is not that of spec"),
    ("a dataset path outside the leaderboard", lambda r: r.update(dataset="../../../../tmp/x/PWNED"),
     "field 'dataset': '../../../../tmp/x/PWNED' is not a dataset of spec"),
    ("a seed other than the spec's", lambda r: r.update(seed=1), "field 'seed': 1, but the spec's seed"),
    ("NAttack's iteration cap lowered", lambda r: r["attacks"]["nattack"]["params"].update(max_iterations=5),
     "field 'attacks.nattack.params.max_iterations': 5, but the budget's NAttack iteration cap is"),
    ("a white-box attack dropped", lambda r: r["attacks"].pop("pgd_margin"),
     "field 'families.white_box.measurements'"),
]


@pytest.mark.parametrize("what, change, message", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_tampered_record_is_refused_on_load(record_copy, what, change, message):
    edit(record_copy, change)
    with pytest.raises(RecordError) as error:
        load_record(record_copy)
    assert message in str(error.value)
    assert str(record_copy) in str(error.value)


@pytest.mark.parametrize("what, change, message", TAMPERED[:8], ids=[t[0] for t in TAMPERED[:8]])
def test_leaderboard_check_refuses_a_tampered_record(record_copy, capsys, what, change, message):
    edit(record_copy, change)
    assert main(["leaderboard", "--check", "--dir", str(record_copy.parent.parent.parent)]) != 0
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def _rewrite_bits(path: Path, name: str, rewrite) -> None:
    outcomes = read_outcomes(path)
    outcomes[name].correct = rewrite(outcomes[name].correct)
    examples_path(path).write_text(json.dumps(examples_document(outcomes)))


def test_a_subsample_not_drawn_by_the_seed_is_refused(record_copy):
    """Which examples NAttack saw is the spec's choice: a hand-picked subsample is refused."""
    outcomes = read_outcomes(record_copy)
    nattack = outcomes["nattack"]
    chosen, others = np.flatnonzero(nattack.subsample), np.flatnonzero(~nattack.subsample)
    nattack.subsample[chosen[0]], nattack.subsample[others[0]] = False, True
    nattack.attacked &= nattack.subsample
    examples_path(record_copy).write_text(json.dumps(examples_document(outcomes)))
    with pytest.raises(RecordError, match="the adaptive subsample is not the seeded uniform one"):
        load_record(record_copy)


def test_an_examples_file_with_an_unstated_measurement_is_refused(record_copy):
    outcomes = read_outcomes(record_copy)
    outcomes["pgd_secret"] = outcomes["pgd"]
    examples_path(record_copy).write_text(json.dumps(examples_document(outcomes)))
    with pytest.raises(RecordError, match="holds outcomes of 'pgd_secret', which the record does not state"):
        load_record(record_copy)


def _forge_consistently(path: Path) -> None:
    """Every clean bit set to 1, and every number derived from the bits recomputed with the judge's
    own functions: a forgery the record alone cannot reveal."""
    _rewrite_bits(path, "clean", np.ones_like)
    rederive(path)


def test_a_consistent_forgery_loads_but_the_clean_replay_refuses_it(record_copy, capsys):
    _forge_consistently(record_copy)
    assert load_record(record_copy)["clean"]["accuracy"] == 1.0   # the record alone cannot tell
    assert main(["leaderboard", "--check", "--dir", str(record_copy.parent.parent.parent)]) != 0
    error = capsys.readouterr().err.strip()
    assert "the per-example file does not match the model" in error
    assert "clean: examples [" in error and len(error.splitlines()) == 1
