"""Recipe files: every committed recipe parses, and a bad one is refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from baselines.recipes import RECIPES_DIR, RecipeError, load_recipe, parse_recipe

GOOD = """
schema = "threatbench.recipe/1"
name = "tiny"
dataset = "fashion-mnist"
architecture = "mnist_d"
trainer = "fgsm_adversarial"
epochs = 2
save_epochs = [1]
batch_size = 64

[optimizer]
name = "adam"
learning_rate = 1e-3

[adversary]
eps = 0.1
"""


def parse(text: str):
    return parse_recipe(text, Path("tiny.toml"))


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.rglob("*.toml")), ids=lambda p: p.stem)
def test_every_committed_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.dataset == path.parent.name
    assert len(recipe.sha256) == 64


def test_a_good_recipe_fills_the_trainer_defaults():
    recipe = parse(GOOD)
    assert recipe.adversary == {"eps": 0.1, "label": "predicted", "clean_weight": 0.5}
    assert recipe.save_epochs == (1,) and recipe.train_limit is None
    assert recipe.run_name().startswith("tiny-")


def test_the_sha256_changes_with_the_file():
    assert parse(GOOD).sha256 != parse(GOOD.replace("eps = 0.1", "eps = 0.2")).sha256


@pytest.mark.parametrize("change, message", [
    (("eps = 0.1", "epz = 0.1"), "adversary.epz: unknown key"),
    (("eps = 0.1", ""), "adversary.eps: missing"),
    (("eps = 0.1", "eps = 1.5"), "adversary.eps must lie in (0, 1]"),
    (("eps = 0.1", 'eps = 0.1\nlabel = "leaky"'), "adversary.label must be one of"),
    (("epochs = 2", 'epochs = "two"'), "epochs must be a int"),
    (("epochs = 2", "epochs = 0"), "epochs must be >= 1"),
    (("save_epochs = [1]", "save_epochs = [3]"), "save_epochs: 3 is not an epoch in 1..2"),
    (('trainer = "fgsm_adversarial"', 'trainer = "magic"'), "trainer 'magic' is not one of"),
    (('architecture = "mnist_d"', 'architecture = "mnist_z"'), "architecture: unknown architecture"),
    (('dataset = "fashion-mnist"', 'dataset = "svhn"'), "dataset 'svhn' is not one of"),
    (('name = "adam"', 'name = "lbfgs"'), "optimizer.name 'lbfgs'"),
    (("learning_rate = 1e-3", "learning_rate = 1e-3\nbeta1 = 0.9"), "optimizer.beta1: unknown key"),
    (("learning_rate = 1e-3", "learning_rate = 0"), "optimizer.learning_rate must be a finite number > 0"),
    (("learning_rate = 1e-3", "learning_rate = 1e-3\nnoise_learning_rate = -1e-5"),
     "optimizer.noise_learning_rate must be a finite number > 0"),
    (("learning_rate = 1e-3", 'learning_rate = 1e-3\nnoise_learning_rate = "small"'),
     "optimizer.noise_learning_rate must be a float"),
    (('schema = "threatbench.recipe/1"', 'schema = "threatbench.recipe/9"'), "this threatbench reads"),
    (("batch_size = 64", "batch_size = 64\nbatchsize = 3"), "batchsize: unknown key"),
    (("batch_size = 64", 'batch_size = 64\nnoise_init = "weight_relative"'),
     "noise_init 'weight_relative' only applies to cni: architectures"),
    (("batch_size = 64", 'batch_size = 64\nnoise_init = "tiny"'), "noise_init 'tiny' is not one of"),
    (("batch_size = 64", 'batch_size = 64\ndeviation = """two\nlines"""'),
     "deviation must be one line of at most 240 characters"),
    (("batch_size = 64", f'batch_size = 64\nexpected_time = "{"x" * 241}"'),
     "expected_time must be one line of at most 240 characters"),
])
def test_a_bad_recipe_names_the_key(change, message):
    with pytest.raises(RecipeError) as error:
        parse(GOOD.replace(*change))
    assert message in str(error.value)
    assert "tiny.toml" in str(error.value)


def test_invalid_toml_is_a_recipe_error():
    with pytest.raises(RecipeError, match="not valid TOML"):
        parse("name = ")


def test_ensemble_training_needs_static_models():
    text = GOOD.replace('trainer = "fgsm_adversarial"', 'trainer = "ensemble_adversarial"')
    with pytest.raises(RecipeError, match="adversary.static_models: missing"):
        parse(text)
    with pytest.raises(RecipeError, match="static_models is empty"):
        parse(text.replace("eps = 0.1", "eps = 0.1\nstatic_models = []"))


def test_a_static_model_is_a_path_or_a_pinned_recipe():
    text = GOOD.replace('trainer = "fgsm_adversarial"', 'trainer = "ensemble_adversarial"')
    pin = "a" * 64
    recipe = parse(text.replace("eps = 0.1", f'eps = 0.1\nstatic_models = ["x/C.toml", '
                                               f'{{recipe = "x/D.toml", recipe_sha256 = "{pin}"}}]'))
    assert [(m.recipe, m.recipe_sha256) for m in recipe.static_models] == [("x/C.toml", None), ("x/D.toml", pin)]
    with pytest.raises(RecipeError, match="each is a recipe path or"):
        parse(text.replace("eps = 0.1", 'eps = 0.1\nstatic_models = [{recipe = "x/D.toml", recipe_sha256 = "abc"}]'))


def test_a_missing_recipe_says_where_it_looked():
    with pytest.raises(RecipeError, match="recipe not found: nope.toml"):
        load_recipe("nope.toml")
