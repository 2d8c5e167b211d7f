"""End to end on the embedded default: train model A on a Fashion-MNIST subset, judge it (quick)."""

from __future__ import annotations

import pytest

from benchmark.defense import load
from benchmark.evaluate import EntryInfo, evaluate
from benchmark.results import read_outcomes, read_record
from benchmark.training import StandardRecipe, train_standard
from tests.conftest import requires_fashion


@requires_fashion
@pytest.mark.slow
def test_train_model_a_briefly_and_evaluate_it_with_the_quick_budget(tmp_path):
    recipe = StandardRecipe(architecture="mnist_a", epochs=1, max_steps=250, train_limit=16000)
    model = train_standard(recipe, tmp_path / "model", progress=False)
    defense = load("mnist_a", model.weights, num_classes=10, sha256=model.sha256)
    out = tmp_path / "A.json"
    result = evaluate(defense, "fashion-mnist", budget="quick", out=out, progress=False,
                      entry=EntryInfo(name="A", architecture="mnist_a",
                                      weights={"file": model.weights.name, "sha256": model.sha256}))
    record = read_record(out)
    assert record["n"] == 500
    clean = record["clean"]["accuracy"]
    attacks = {name: a["accuracy"] for name, a in record["attacks"].items()}
    assert clean > 0.7, "a few hundred Adam steps reach well above 70% on Fashion-MNIST"
    assert attacks["pgd"] < clean - 0.3, "eps = 0.1 PGD breaks an undefended model"
    assert attacks["pgd"] <= attacks["fgsm"]
    assert record["worst_case"]["white_box"]["accuracy"] <= attacks["pgd"]
    assert set(read_outcomes(out)) == {"clean", *attacks}
    assert result.record["flags"]["single_step_beats_pgd"]["raised"] is False
