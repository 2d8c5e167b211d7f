"""Precision policy: float32 unless TF32 / bf16 passed a check on a trained model on this device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.evaluation.loop import evaluate
from benchmark.evaluation.results import read_json
from benchmark.models.defense import Defense
from benchmark.runtime.precision import (
    PrecisionError,
    check_path,
    precision_context,
    require_validated,
)
from benchmark.tools.precision_check import compare_attack, run_precision_check, write_check
from tests.attacks.test_transfer import small_spec

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_precision_checks(tmp_path, monkeypatch):
    # Checks are stored in the cache: each test starts with none.
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path / "cache"))


def test_float32_switches_off_tf32_inside_and_restores_the_settings():
    torch.backends.cudnn.allow_tf32 = True   # PyTorch's own default for cuDNN convolutions
    with precision_context("float32", CPU):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32


def test_bf16_autocast_really_computes_in_bf16():
    layer = torch.nn.Linear(8, 4)
    with precision_context("bf16", CPU):
        assert layer(torch.rand(2, 8)).dtype == torch.bfloat16
    assert layer(torch.rand(2, 8)).dtype == torch.float32


def test_unvalidated_or_unavailable_precisions_are_refused(trained_mlp):
    with pytest.raises(PrecisionError, match="bf16 has not been validated on cpu .*threatbench precision-check"):
        evaluate(Defense(trained_mlp, 10), "fashion-mnist", spec=small_spec(n=20), precision="bf16",
                 families=("white_box",), progress=False)
    with pytest.raises(PrecisionError, match="TF32 is a CUDA matmul and convolution mode"):
        require_validated("tf32", CPU)
    with pytest.raises(PrecisionError, match="unknown precision 'fp8'"):
        require_validated("fp8", CPU)


def test_a_failed_or_stale_check_keeps_the_precision_refused():
    far = compare_attack("pgd", np.array([True] * 60 + [False] * 40), np.array([True] * 90 + [False] * 10))
    assert far.float32 == 0.6 and far.other == 0.9 and far.flipped == 30 and not far.within
    write_check("bf16", CPU, [far], model={"entry": "synthetic"}, n=100)
    with pytest.raises(PrecisionError, match="bf16 failed its check .*pgd moved beyond"):
        require_validated("bf16", CPU)
    close = compare_attack("pgd", np.array([True] * 60 + [False] * 40), np.array([True] * 61 + [False] * 39))
    assert close.within
    write_check("bf16", CPU, [close], model={"entry": "synthetic"}, n=100)
    assert require_validated("bf16", CPU)["model"] == {"entry": "synthetic"}
    document = read_json(check_path("bf16", CPU))
    document["torch"] = "1.0"
    check_path("bf16", CPU).write_text(__import__("json").dumps(document))
    with pytest.raises(PrecisionError, match="another torch"):
        require_validated("bf16", CPU)


@pytest.mark.slow
def test_bf16_passes_its_check_on_a_trained_model_and_is_then_recorded(trained_mlp, tmp_path):
    defense = Defense(trained_mlp, 10, name="mlp")
    check = run_precision_check(defense, "fashion-mnist", "bf16", n=200, device=CPU,
                                model={"entry": "mlp"}, progress=False)
    measured = {a["attack"]: a for a in check["attacks"]}
    assert set(measured) == {"clean", "fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd", "pgd_margin"}
    assert measured["pgd"]["float32"] < measured["clean"]["float32"] - 0.2, "the attacks are real"
    assert check["passed"], f"bf16 moved an attack beyond float32's tolerance: {check['attacks']}"

    result = evaluate(defense, "fashion-mnist", spec=small_spec(n=40), precision="bf16", families=("white_box",),
                      progress=False, out=tmp_path / "mlp.json")
    provenance = result.record["provenance"]
    assert provenance["precision"] == "bf16" and provenance["precision_check"]["n"] == 200
    plain = evaluate(defense, "fashion-mnist", spec=small_spec(n=40), families=("white_box",), progress=False)
    assert plain.record["provenance"]["precision"] == "float32"
