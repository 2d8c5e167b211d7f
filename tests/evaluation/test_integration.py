"""End to end on the embedded default: train model A on a Fashion-MNIST subset, judge it under all
three families (quick budget, with NAttack shortened to keep CI fast)."""

from __future__ import annotations

import pytest

from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.loop import evaluate
from benchmark.evaluation.results import read_outcomes, read_record
from benchmark.models.defense import load
from benchmark.models.training import StandardRecipe, train_standard
from tests.attacks.test_transfer import small_spec
from tests.conftest import requires_fashion


@requires_fashion
@pytest.mark.slow
def test_train_model_a_briefly_and_evaluate_it_under_all_families(tmp_path):
    recipe = StandardRecipe(architecture="mnist_a", epochs=1, max_steps=250, train_limit=16000)
    model = train_standard(recipe, tmp_path / "model", progress=False)
    defense = load("mnist_a", model.weights, num_classes=10, sha256=model.sha256)
    out = tmp_path / "A.json"
    spec = small_spec(n=150, nattack_n=6, nattack_max_iterations=20)
    result = evaluate(defense, "fashion-mnist", budget="quick", out=out, progress=False, spec=spec,
                      entry=EntryInfo(name="A", architecture="mnist_a",
                                      weights={"file": model.weights.name, "sha256": model.sha256}))
    record = read_record(out)
    assert record["n"] == 150 and record["nattack_n"] == 6
    assert all(status["status"] == "run" for status in record["families"].values())
    clean = record["clean"]["accuracy"]
    attacks = {name: a["accuracy"] for name, a in record["attacks"].items()}
    assert clean > 0.7, "a few hundred Adam steps reach well above 70% on Fashion-MNIST"
    assert attacks["pgd"] < clean - 0.3, "eps = 0.1 PGD breaks an undefended model"
    assert attacks["pgd"] <= attacks["fgsm"]
    assert attacks["transfer/B/fgsm"] < clean, "examples crafted on held-out B transfer"
    # The cascade: NAttack attacks the survivors of its 6-example subsample, and spends per attacked
    # example at most the clean check, 20 populations, mean checks at iterations 0 and 10 and after
    # the last update, and one judged population member per iteration.
    nattack = record["attacks"]["nattack"]
    assert nattack["cascade"]["subsample"] == 6
    assert nattack["cascade"]["attacked"] == nattack["cascade"]["survivors"]
    assert ("queries" in nattack) == (nattack["cascade"]["attacked"] > 0)
    assert nattack.get("queries", {}).get("max", 0) <= 1 + 20 * 300 + 3 + 20
    assert record["worst_case"]["white_box"]["accuracy"] <= attacks["pgd"]
    key = record["worst_case"]["all"]
    assert key["accuracy"] <= key["estimate"]["p"] <= record["worst_case"]["white_box"]["accuracy"]
    outcomes = read_outcomes(out)
    assert outcomes["nattack"].n == 150 and outcomes["nattack"].subsample.sum() == 6
    assert outcomes["nattack"].attacked.sum() == nattack["cascade"]["attacked"]
    assert result.record["flags"]["single_step_beats_pgd"]["raised"] is False
