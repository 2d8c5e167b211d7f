"""The held-out check: weights fitted to the fixed evaluation images are refused before any attack, an
honest model is judged and its record says what the check measured."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from benchmark.data import load_evaluation_set
from benchmark.errors import StatefulDefenseError
from benchmark.evaluate import evaluate
from benchmark.evaluation.checks.held_out import REFUSE_BELOW, held_out_comparison
from benchmark.evaluation.stats import stratified_exact_greater
from benchmark.models.defense import Defense
from tests.conftest import requires_fashion

CPU = torch.device("cpu")


def test_one_stratum_is_fishers_exact_test():
    # 3 of 3 correct against 0 of 3: the observed table is the most extreme of C(6, 3) = 20 equally likely
    assert stratified_exact_greater([(3, 3, 0, 3)]) == pytest.approx(1 / 20)
    assert stratified_exact_greater([(3, 3, 0, 3), (3, 3, 0, 3)]) == pytest.approx(1 / 400)
    assert stratified_exact_greater([(0, 3, 3, 3)]) == pytest.approx(1.0)


def test_a_different_class_mix_is_not_a_gap():
    # Equal accuracy within each class (an easy class at 98%, a hard one at 60%), but the first group
    # holds mostly the easy class: pooled it is 94.2% against 63.8%, yet nothing was fitted.
    strata = [(490, 500, 49, 50), (30, 50, 300, 500)]
    assert stratified_exact_greater(strata) > 0.3


class SubsetMemoriser(nn.Module):
    """Fitted to the evaluation images: the true label for any input within eps of one of them, the
    honest model elsewhere (what adversarial training on exactly those images aims at)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float = 0.1):
        super().__init__()
        self.model, self.eps = model, eps
        self.register_buffer("images", images.flatten(1))
        self.register_buffer("labels", labels)

    def forward(self, x):
        logits = self.model(x)
        distance = (x.flatten(1)[:, None, :] - self.images[None]).abs().amax(-1)
        nearest, index = distance.min(1)
        memorised = 20 * nn.functional.one_hot(self.labels[index], logits.shape[1]).to(logits.dtype)
        return torch.where((nearest <= self.eps)[:, None], memorised, logits)


def evaluation_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    eval_set = load_evaluation_set("fashion-mnist", n, download=False)
    return torch.stack([eval_set[i][0] for i in range(n)]), eval_set.labels.clone()


@requires_fashion
def test_weights_fitted_to_the_evaluation_images_are_refused_before_any_attack(trained_mlp):
    cheat = Defense(SubsetMemoriser(trained_mlp, *evaluation_images(200)), 10, name="fitted")
    comparison = held_out_comparison(cheat, "fashion-mnist", 200, None, seed=0, device=CPU)
    assert comparison.subset_correct == 200 and comparison.rest_correct < 0.95 * comparison.rest_n
    assert comparison.rest_n == 1000 and comparison.p_value < REFUSE_BELOW
    with pytest.raises(StatefulDefenseError) as refused:
        evaluate(cheat, dataset="fashion-mnist", budget="quick", families=("white_box",), device="cpu")
    message = str(refused.value)
    assert refused.value.check == "held_out" and "\n" not in message
    # fitted to 200 of the quick budget's 500 images: still refused
    assert re.match(r"fitted: refused by the held-out check: clean accuracy \d+\.\d% on the 500 evaluation "
                    r"images but \d+\.\d% on 2,000 other test images of the same classes \(exact stratified "
                    r"test, p = [-0-9.e]+ < 0.0001\)", message), message


@requires_fashion
def test_an_honest_model_is_judged_and_its_record_shows_the_comparison(trained_defense, tmp_path):
    out = tmp_path / "mlp.json"
    evaluate(trained_defense, dataset="fashion-mnist", budget="quick", families=("white_box",), device="cpu",
             out=out, progress=False)
    held_out = json.loads(out.read_text())["held_out"]
    assert held_out["status"] == "run" and held_out["p_value"] >= REFUSE_BELOW
    assert (held_out["subset"]["n"], held_out["rest"]["n"]) == (500, 2000)
    assert abs(held_out["subset"]["accuracy"] - held_out["rest"]["accuracy"]) < 0.06


@requires_fashion
def test_a_budget_that_evaluates_the_whole_test_set_says_there_is_nothing_to_compare(trained_defense):
    reason = held_out_comparison(trained_defense, "fashion-mnist", 10000, None, seed=0, device=CPU)
    assert reason == "the budget evaluates all 10,000 test images; none is left to compare with"
