"""The regression replay: exact for deterministic entries, fails on a perturbed record, skips with
the missing resource named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark import regression
from benchmark.regression import MissingResource, compare, regression_cases
from benchmark.results import decode_bits, encode_bits, examples_path, read_outcomes
from tests.conftest import requires_fashion

RESULTS = Path(__file__).resolve().parent.parent / "leaderboard" / "results"
D_RECORD = RESULTS / "fashion-mnist" / "D-standard.json"


@pytest.fixture
def d_copy(tmp_path) -> Path:
    if not D_RECORD.is_file():
        pytest.skip(f"{D_RECORD} is not committed (threatbench run --entries D --budget standard --out-dir leaderboard/results)")
    target = tmp_path / "results" / "fashion-mnist" / D_RECORD.name
    target.parent.mkdir(parents=True)
    shutil.copy(D_RECORD, target)
    shutil.copy(examples_path(D_RECORD), examples_path(target))
    regression.replay.cache_clear()
    return target


def test_case_ids_name_dataset_entry_and_measurement():
    ids = [case.test_id for case in regression_cases(RESULTS)]
    assert "fashion_mnist-D-pgd" in ids and "fashion_mnist-D-transfer_B_fgsm" in ids and "fashion_mnist-D-nattack" in ids
    assert all(i.startswith(("fashion_mnist-", "imagenet-", "cifar10-", "cifar100-", "mnist-")) for i in ids)


@requires_fashion
def test_a_committed_deterministic_record_replays_exactly(d_copy):
    compare(d_copy, "pgd")
    compare(d_copy, "clean")


@requires_fashion
def test_a_perturbed_record_fails_its_regression(d_copy):
    examples = json.loads(examples_path(d_copy).read_text())
    entry = examples["measurements"]["fgsm"]
    bits = decode_bits(entry["bits"][0], entry["n"])
    bits[3] = not bits[3]                      # one of the replayed examples changes outcome
    entry["bits"][0] = encode_bits(bits)
    examples_path(d_copy).write_text(json.dumps(examples))
    record = json.loads(d_copy.read_text())
    record["attacks"]["fgsm"]["correct"] += 1 if bits[3] else -1
    d_copy.write_text(json.dumps(record))
    with pytest.raises(AssertionError, match=r"examples \[3\] of the first 40 changed outcome"):
        compare(d_copy, "fgsm")


def test_missing_weights_skip_with_their_sha256_named(d_copy):
    record = json.loads(d_copy.read_text())
    record["entry"]["weights"]["sha256"] = "0" * 64
    d_copy.write_text(json.dumps(record))
    with pytest.raises(MissingResource, match="weights with sha256 000000000000... are not in the repository"):
        compare(d_copy, "clean")


def test_a_gpu_record_skips_on_a_machine_without_one(d_copy, monkeypatch):
    record = json.loads(d_copy.read_text())
    record["provenance"]["device"] = "cuda"
    d_copy.write_text(json.dumps(record))
    monkeypatch.setattr(regression.torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingResource, match="measured on a GPU and this machine has none"):
        compare(d_copy, "clean")


@requires_fashion
def test_nattack_replays_on_the_examples_the_record_attacked(d_copy):
    record = json.loads(d_copy.read_text())
    assert record["attacks"]["nattack"]["cascade"]["attacked"] >= regression.REGRESSION_NATTACK_N
    compare(d_copy, "nattack")
    columns, _ = regression.replay(d_copy)["nattack"]
    attacked = np.flatnonzero(read_outcomes(d_copy)["nattack"].attacked)
    assert columns.tolist() == attacked[:regression.REGRESSION_NATTACK_N].tolist()
