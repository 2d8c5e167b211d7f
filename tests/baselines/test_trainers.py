"""Each baseline trainer, a few steps on a tiny subset: it changes the weights, keeps the expected
parameter structure, resumes exactly, and ensemble training never draws a held-out source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import baselines.train as train_module
from baselines.objectives import (
    BatchContext,
    ensemble_adversarial_loss,
    trades_examples,
    truncated_normal_eps,
)
from baselines.recipes import RecipeError, parse_recipe
from baselines.train import train_recipe
from benchmark.models.architectures import build
from benchmark.models.training import checkpoint_seconds
from tests.conftest import requires_fashion

ADVERSARIES = {
    "standard": "",
    "fgsm_adversarial": "eps = 0.1",
    "kurakin": "eps_max = 0.1\neps_std = 0.05",
    "madry_pgd": "eps = 0.1\nsteps = 2\nstep_size = 0.05",
    "pgd_adversarial": "eps = 0.1\nsteps = 2\nstep_size = 0.05",
    "trades": "eps = 0.1\nsteps = 2\nstep_size = 0.05\nbeta = 6.0",
}


def write_recipe(directory: Path, name: str, trainer: str, adversary: str, *, architecture="mnist_d",
                 epochs: int = 1, extra: str = "") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f"""
schema = "threatbench.recipe/1"
name = "{name}"
dataset = "fashion-mnist"
architecture = "{architecture}"
trainer = "{trainer}"
epochs = {epochs}
batch_size = 32
train_limit = 128
{extra}
[optimizer]
name = "adam"
learning_rate = 1e-3
""" + (f"\n[adversary]\n{adversary}\n" if adversary else ""))
    return path


def initial_state(architecture: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build(architecture, 10).network.state_dict().items()}


def load_recipe_file(path: Path):
    return parse_recipe(path.read_text(), path)


@requires_fashion
@pytest.mark.parametrize("trainer", sorted(ADVERSARIES))
def test_each_trainer_changes_the_weights(tmp_path, trainer):
    recipe = load_recipe_file(write_recipe(tmp_path, f"t_{trainer}", trainer, ADVERSARIES[trainer]))
    run = train_recipe(recipe, tmp_path / "run", progress=False, max_steps=2 if trainer != "standard" else None)
    trained = load_file(str(run.final.path))
    before = initial_state("mnist_d")
    assert set(trained) == set(before)
    assert not torch.equal(trained["1.weight"], before["1.weight"])


@requires_fashion
@pytest.mark.parametrize("kind", ["pni", "cni"])
def test_noise_injection_training_trains_the_noise_parameters(tmp_path, kind):
    architecture = f"{kind}:mnist_d"
    recipe = load_recipe_file(write_recipe(tmp_path, kind, "pgd_adversarial",
                                           ADVERSARIES["pgd_adversarial"], architecture=architecture))
    run = train_recipe(recipe, tmp_path / "run", progress=False, max_steps=3)
    trained, before = load_file(str(run.final.path)), initial_state(architecture)
    noise_keys = [k for k in before if k.rsplit(".", 1)[-1] not in ("weight", "bias")]
    assert noise_keys, "a noise-injection model has noise parameters beside its weights"
    assert set(trained) == set(before)
    assert any(not torch.equal(trained[k], before[k]) for k in noise_keys)


def test_noise_parameters_get_no_weight_decay():
    recipe = parse_recipe(write_recipe_text("pni:mnist_d", "sgd", "weight_decay = 0.01"), Path("r.toml"))
    model = build("pni:mnist_d", 10).network
    optimizer = train_module.make_optimizer(recipe, model)
    decays = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        expected = 0.01 if name.endswith(("weight", "bias")) else 0.0
        assert decays[id(parameter)] == expected, name


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_noise_parameters_take_their_own_learning_rate_where_the_recipe_sets_one(optimizer):
    model = build("cni:mnist_d", 10).network
    rates = {}
    for extra in ("", "noise_learning_rate = 2e-5"):
        recipe = parse_recipe(write_recipe_text("cni:mnist_d", optimizer, extra), Path("r.toml"))
        groups = train_module.make_optimizer(recipe, model).param_groups
        rates[extra] = {id(p): group["lr"] for group in groups for p in group["params"]}
    noise = [p for name, p in model.named_parameters() if not name.endswith(("weight", "bias"))]
    weights = [p for name, p in model.named_parameters() if name.endswith(("weight", "bias"))]
    assert noise and weights
    assert all(rates[""][id(p)] == 0.1 for p in noise + weights)
    assert all(rates["noise_learning_rate = 2e-5"][id(p)] == 2e-5 for p in noise)
    assert all(rates["noise_learning_rate = 2e-5"][id(p)] == 0.1 for p in weights)


def write_recipe_text(architecture: str, optimizer: str, extra: str) -> str:
    return f"""
schema = "threatbench.recipe/1"
name = "r"
dataset = "fashion-mnist"
architecture = "{architecture}"
trainer = "pgd_adversarial"
epochs = 1
batch_size = 32
[optimizer]
name = "{optimizer}"
learning_rate = 0.1
{extra}
[adversary]
eps = 0.1
steps = 1
step_size = 0.1
"""


@requires_fashion
def test_an_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, "resume", "fgsm_adversarial", ADVERSARIES["fgsm_adversarial"],
                        epochs=3, extra="save_epochs = [1, 2]")
    recipe = load_recipe_file(path)
    uninterrupted = train_recipe(recipe, tmp_path / "a", progress=False)

    original, calls = train_module.run_epoch, {"n": 0}

    def interrupt_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", interrupt_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_recipe(recipe, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "b" / "model.json").exists()
    first_session = checkpoint_seconds(tmp_path / "b" / "checkpoint.safetensors")
    monkeypatch.setattr(train_module, "run_epoch", original)
    resumed = train_recipe(recipe, tmp_path / "b", progress=False)
    training = json.loads((tmp_path / "b" / "model.json").read_text())["training"]
    assert training["seconds"] > first_session > 0, "the wall time covers every session"
    assert training["device"].startswith("cpu: ") and training["train_images"] == recipe.train_limit

    assert resumed.final.epoch == 3 and sorted(resumed.snapshots) == [1, 2]
    for a, b in [(uninterrupted.final, resumed.final), *[
            (uninterrupted.snapshots[e], resumed.snapshots[e]) for e in (1, 2)]]:
        first, second = load_file(str(a.path)), load_file(str(b.path))
        assert all(torch.equal(first[k], second[k]) for k in first)
    assert resumed.final.sha256 == uninterrupted.final.sha256
    monkeypatch.setattr(train_module, "run_epoch", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert train_recipe(recipe, tmp_path / "b", progress=False).final.sha256 == resumed.final.sha256


@requires_fashion
def test_ensemble_training_draws_only_the_model_and_its_static_sources(tmp_path):
    statics = [write_recipe(tmp_path, name, "standard", "", architecture=arch)
               for name, arch in (("static_c", "mnist_c"), ("static_d", "mnist_d"))]
    static_list = ", ".join(f'"{p}"' for p in statics)
    recipe = load_recipe_file(write_recipe(
        tmp_path, "ens", "ensemble_adversarial", f"eps = 0.1\nstatic_models = [{static_list}]",
        epochs=2))
    run = train_recipe(recipe, tmp_path / "run", progress=False)
    card = (run.directory / "model.json").read_text()
    import json

    counts = json.loads(card)["ensemble_source_batches"]
    assert set(counts) <= {"self", "static_c", "static_d"}
    assert sum(counts.values()) == 8          # 2 epochs x 128 images / batch 32
    seen = json.loads(card)["static_models"]
    assert [m["name"] for m in seen] == ["static_c", "static_d"]
    for model, path in zip(seen, statics, strict=True):
        static_run = train_recipe(load_recipe_file(path), progress=False)    # cached: no retraining
        assert model["weights_sha256"] == static_run.final.sha256
        assert model["recipe_sha256"] == load_recipe_file(path).sha256


@requires_fashion
def test_a_held_out_source_as_static_model_is_refused(tmp_path):
    held_out = write_recipe(tmp_path, "sneaky_b", "standard", "", architecture="mnist_b")
    recipe = load_recipe_file(write_recipe(
        tmp_path, "ens", "ensemble_adversarial", f'eps = 0.1\nstatic_models = ["{held_out}"]'))
    with pytest.raises(RecipeError, match="held-out source 'B'"):
        train_recipe(recipe, tmp_path / "run", progress=False)


@requires_fashion
def test_a_static_model_whose_recipe_changed_since_its_pin_is_refused_before_training(tmp_path, monkeypatch):
    static = write_recipe(tmp_path, "static_d", "standard", "", architecture="mnist_d")
    pinned = load_recipe_file(static).sha256
    recipe = load_recipe_file(write_recipe(
        tmp_path, "ens", "ensemble_adversarial",
        f'eps = 0.1\nstatic_models = [{{recipe = "{static}", recipe_sha256 = "{pinned}"}}]'))
    static.write_text(static.read_text().replace("epochs = 1", "epochs = 2"))
    monkeypatch.setattr(train_module, "run_epoch", lambda *a, **k: pytest.fail("trained before the check"))
    with pytest.raises(RecipeError, match="has changed since this recipe pinned it"):
        train_recipe(recipe, tmp_path / "run", progress=False)


def test_ensemble_sources_are_drawn_uniformly_among_model_and_statics():
    network = build("mnist_d", 10)
    statics = []
    for name in ("A", "C", "D"):
        static = build("mnist_d", 10).eval()
        static.name = name
        statics.append(static)
    context = BatchContext(network, {"eps": 0.1, "clean_weight": 0.5}, 0,
                           torch.Generator().manual_seed(0), statics, {})
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for _ in range(400):
        ensemble_adversarial_loss(context, x, y)
    assert set(context.source_counts) == {"self", "A", "C", "D"}
    assert all(70 <= count <= 130 for count in context.source_counts.values()), context.source_counts


def test_kurakin_eps_follows_a_truncated_normal():
    torch.manual_seed(0)
    eps = truncated_normal_eps(20000, std=0.05, maximum=0.1)
    assert float(eps.min()) >= 0.0 and float(eps.max()) <= 0.1
    # Half-normal truncated at 2 std: mean = std * sqrt(2/pi) * (1 - e^-2) / erf(sqrt 2) ~ 0.0363
    assert abs(float(eps.mean()) - 0.0363) < 0.0015


def test_trades_examples_stay_in_the_ball_and_raise_the_divergence():
    torch.manual_seed(0)
    network = build("mnist_d", 10).eval()
    x = torch.rand(8, 1, 28, 28)
    x_adv = trades_examples(network, x, eps=0.1, steps=5, step_size=0.03, init_std=0.001)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        p = torch.softmax(network(x), 1)
        def kl(z):
            return float(torch.nn.functional.kl_div(torch.log_softmax(network(z), 1), p, reduction="sum"))
        assert kl(x_adv) > kl(x + 0.001 * torch.randn_like(x))


@requires_fashion
def test_the_train_command_prints_the_weights_and_their_sha256(tmp_path, capsys):
    from benchmark.cli import main

    path = write_recipe(tmp_path, "cli", "fgsm_adversarial", ADVERSARIES["fgsm_adversarial"])
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    sha256 = load_recipe_file(path).sha256
    assert f"recipe sha256 {sha256}" in output
    from benchmark.models.defense import file_sha256
    assert f"sha256:  {file_sha256(tmp_path / 'run' / 'weights.safetensors')}" in output


def test_the_train_command_refuses_a_bad_recipe_in_one_line(tmp_path, capsys):
    from benchmark.cli import main

    path = tmp_path / "bad.toml"
    path.write_text(GOOD_HEADER.replace("epochs = 1", "epochs = 0"))
    assert main(["train", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "epochs must be >= 1" in error


GOOD_HEADER = """
schema = "threatbench.recipe/1"
name = "bad"
dataset = "fashion-mnist"
architecture = "mnist_d"
trainer = "standard"
epochs = 1
batch_size = 32
"""
