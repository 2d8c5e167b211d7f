"""Records are validated on load: a bad field is named with its file, and the per-example file must
agree with the numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.evaluation.record_check import load_record
from benchmark.evaluation.results import RecordError, examples_path
from benchmark.spec import load_spec

RECORDS = Path(__file__).resolve().parents[2] / "leaderboard" / "results" / "fashion-mnist"
COMMITTED = sorted(p for p in RECORDS.rglob("*-quick.json") if "smoothing" not in p.name)


@pytest.fixture
def record_copy(tmp_path) -> Path:
    if not COMMITTED:
        pytest.skip("no committed record under leaderboard/reproductions/records (run threatbench reproduce)")
    source = COMMITTED[0]
    shutil.copy(source, tmp_path / source.name)
    shutil.copy(examples_path(source), examples_path(tmp_path / source.name))
    return tmp_path / source.name


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_every_committed_record_is_valid(path):
    superseded = path.parent.name.startswith("spec-")   # leaderboard/results/<dataset>/spec-<version>/
    load_record(path, spec_version=path.parent.name[len("spec-"):] if superseded else load_spec().version)


def test_a_valid_copy_loads(record_copy):
    assert load_record(record_copy)["schema"] == "threatbench.result/1"


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(schema="threatbench.result/0"), "'schema'"),
    (lambda r: r["clean"].update(accuracy="0.9"), "'clean.accuracy': expected a number, got '0.9'"),
    (lambda r: r["attacks"]["fgsm"].pop("interval"), "'attacks.fgsm.interval': missing"),
    (lambda r: r.pop("subset_sha256"), "'subset_sha256': missing"),
    (lambda r: r.update(budget="huge"), "'budget': 'huge' is not one of quick, standard, full"),
    (lambda r: r["attacks"]["pgd"].update(accuracy=1.5), "'attacks.pgd.accuracy': 1.5 is outside"),
    (lambda r: r["clean"].update(interval=[0.1, 0.2]), "'clean.interval': [0.1, 0.2] does not contain"),
    (lambda r: r["families"].pop("transfer"), "'families.transfer': missing"),
    (lambda r: r.update(n=True), "'n': expected an integer"),
])
def test_a_broken_record_names_the_file_and_the_field(record_copy, change, field):
    edit(record_copy, change)
    with pytest.raises(RecordError) as error:
        load_record(record_copy)
    assert str(record_copy) in str(error.value)
    assert field in str(error.value)


def test_another_spec_version_is_refused(record_copy):
    version = json.loads(record_copy.read_text())["spec"]["version"]
    with pytest.raises(RecordError, match=f"'spec.version': '{version}', but this threatbench judges with spec '9.9.9'"):
        load_record(record_copy, spec_version="9.9.9")


def test_numbers_that_disagree_with_the_per_example_file_are_refused(record_copy):
    edit(record_copy, lambda r: r["attacks"]["fgsm"].update(correct=r["attacks"]["fgsm"]["correct"] + 1))
    with pytest.raises(RecordError, match="'attacks.fgsm.correct': .* per-example outcomes count"):
        load_record(record_copy)


def test_a_missing_per_example_file_is_refused(record_copy):
    examples_path(record_copy).unlink()
    with pytest.raises(RecordError, match="examples.json is missing"):
        load_record(record_copy)
