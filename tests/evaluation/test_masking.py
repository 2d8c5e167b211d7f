"""Constructed gradient-masked models: the flags fire and the worst case over all families lies
far below the white-box number. (Logit scaling, binarisation and undeclared noise, each compared
with a strong adaptive attack: tests/evaluation/test_worst_case_holds.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.evaluation.loop import evaluate
from benchmark.models.defense import Defense
from tests.attacks.test_transfer import small_spec
from tests.conftest import requires_fashion

pytestmark = [requires_fashion, pytest.mark.slow]


class QuantizedInput(nn.Module):
    """A non-differentiable input quantization (4 grey levels): the input gradient is zero."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


def _judge(model, tmp_path, randomized=False):
    spec = small_spec(n=300, nattack_n=60, nattack_max_iterations=60)
    return evaluate(Defense(model, 10, randomized=randomized), "fashion-mnist", budget="quick", spec=spec,
                    out=tmp_path / "r.json", progress=False).record


def _gap(record):
    """How far the worst case over all families lies below the headline white-box PGD number."""
    return record["attacks"]["pgd"]["accuracy"] - record["worst_case"]["all"]["accuracy"]


def test_shattered_gradients_are_caught(trained_mlp, tmp_path):
    record = _judge(QuantizedInput(trained_mlp), tmp_path)
    flags = record["flags"]
    assert flags["transfer_beats_white_box"]["raised"] is True
    assert flags["nattack_beats_white_box"]["raised"] is True
    assert flags["pgd_unbounded_not_zero"]["raised"] is True
    assert _gap(record) > 0.3


def test_an_honest_model_raises_no_masking_flag(trained_mlp, tmp_path):
    record = _judge(trained_mlp, tmp_path)
    raised = [name for name, flag in record["flags"].items() if flag["raised"]]
    assert raised == []
    overall = record["worst_case"]["all"]
    on_subset = overall["families_on_subset"]
    assert on_subset["all"] <= min(on_subset["white_box"], on_subset["transfer"])
    assert overall["estimate"]["p"] <= record["worst_case"]["white_box"]["accuracy"]
    assert overall["accuracy"] <= overall["estimate"]["p"], "q <= 1: NAttack can only lower the key"
    assert overall["families_on_subset"]["white_box"] < record["clean"]["accuracy"] - 0.4, "PGD breaks an undefended model"
