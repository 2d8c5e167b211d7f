"""Properties of the white-box attacks on a trained Fashion-MNIST model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark.attacks import gradient
from benchmark.attacks.gradient import (
    WHITE_BOX,
    AttackBatch,
    check_perturbation,
    fgsm,
    ifgsm,
    input_gradient,
    pgd,
    rand_fgsm,
    run_white_box,
    step_ll,
)
from benchmark.errors import AttackBoundsError, ThreatbenchError
from benchmark.models.defense import Defense
from benchmark.runtime.randomness import per_example_uniform
from benchmark.spec import load_spec
from tests.conftest import NoisyModel

EPS = 0.1


@pytest.fixture(scope="module")
def spec_dataset():
    return load_spec().dataset("fashion-mnist")


def _batch(fashion_test_batch, n=64):
    x, y = fashion_test_batch
    return AttackBatch(x=x[:n], y=y[:n], indices=torch.arange(n))


def _accuracy(defense, x, y):
    return (defense.predict(x) == y).float().mean().item()


@pytest.mark.parametrize("name", list(WHITE_BOX))
def test_every_attack_stays_in_the_ball_and_in_range(name, trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch)
    x_adv = run_white_box(name, trained_defense, batch, spec_dataset.attacks[name], EPS, seed=0)
    assert (x_adv - batch.x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, batch.x), "the attack changed nothing"


@pytest.mark.parametrize("name", list(WHITE_BOX))
def test_every_attack_lowers_accuracy(name, trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 128)
    x_adv = run_white_box(name, trained_defense, batch, spec_dataset.attacks[name], EPS, seed=0)
    assert _accuracy(trained_defense, x_adv, batch.y) < _accuracy(trained_defense, batch.x, batch.y) - 0.1


def test_eps_zero_is_the_identity(trained_defense, fashion_test_batch):
    x, y = fashion_test_batch
    x, y = x[:32], y[:32]
    generator = torch.Generator().manual_seed(0)
    outputs = [
        fgsm(trained_defense, x, y, eps=0.0),
        step_ll(trained_defense, x, eps=0.0),
        rand_fgsm(trained_defense, x, y, eps=0.0, alpha=0.0, generator=generator),
        ifgsm(trained_defense, x, y, eps=0.0, steps=5),
        pgd(trained_defense, x, y, eps=0.0, steps=5, step_size=0.01, generator=generator),
    ]
    for x_adv in outputs:
        assert torch.equal(x_adv, x)


def test_step_ll_raises_the_least_likely_class_probability(trained_defense, fashion_test_batch):
    x, _ = fashion_test_batch
    least_likely = trained_defense.scores(x).argmin(dim=1)
    x_adv = step_ll(trained_defense, x, eps=EPS)
    before = trained_defense.scores(x).gather(1, least_likely[:, None])
    after = trained_defense.scores(x_adv).gather(1, least_likely[:, None])
    assert (after > before).float().mean() > 0.9
    assert after.mean() > 10 * before.mean()


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_trained_model(trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 128)
    accuracy = {
        name: _accuracy(trained_defense, run_white_box(name, trained_defense, batch,
                                                       spec_dataset.attacks[name], EPS, 0), batch.y)
        for name in ("fgsm", "ifgsm", "pgd")
    }
    assert accuracy["pgd"] <= accuracy["fgsm"]
    assert accuracy["ifgsm"] <= accuracy["fgsm"]


def test_same_seed_same_result_other_seed_other_start(trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 16)
    params = spec_dataset.attacks["pgd"]
    first = run_white_box("pgd", trained_defense, batch, params, EPS, seed=3)
    again = run_white_box("pgd", trained_defense, batch, params, EPS, seed=3)
    other = run_white_box("pgd", trained_defense, batch, params, EPS, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_random_starts_do_not_depend_on_the_batch_layout():
    whole = per_example_uniform((1, 28, 28), torch.arange(10), 0, "pgd", -0.1, 0.1)
    halves = torch.cat([per_example_uniform((1, 28, 28), torch.arange(0, 4), 0, "pgd", -0.1, 0.1),
                        per_example_uniform((1, 28, 28), torch.arange(4, 10), 0, "pgd", -0.1, 0.1)])
    assert torch.equal(whole, halves)


def _reference_pgd(model, x, y, eps, steps, step_size, start):
    """The textbook loop (Madry et al.), written independently: .backward() on a leaf tensor."""
    x_adv = torch.clamp(x + start, 0, 1)
    for _ in range(steps):
        x_adv = x_adv.clone().detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + step_size * x_adv.grad.sign()
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0, 1)
    return x_adv.detach()


def test_pgd_matches_a_direct_reference_on_the_same_seed(trained_mlp, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 32)
    params = spec_dataset.attacks["pgd"]
    defense = Defense(trained_mlp, 10)
    ours = run_white_box("pgd", defense, batch, params, EPS, seed=0)
    start = per_example_uniform((1, 28, 28), batch.indices, 0, "pgd", -EPS, EPS)
    reference = _reference_pgd(trained_mlp, batch.x, batch.y, EPS, params.steps, params.step_size, start)
    # Sign steps amplify last-bit differences between reduction orders only where a gradient
    # component is ~0; require near-identity on almost every pixel and identical predictions.
    close = (ours - reference).abs() <= 1e-5
    assert close.float().mean() > 0.999
    assert torch.equal(defense.predict(ours), defense.predict(reference))


def test_attacks_never_touch_the_weights(trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 16)
    run_white_box("pgd", trained_defense, batch, spec_dataset.attacks["pgd"], EPS, seed=0)
    assert all(p.grad is None and not p.requires_grad for p in trained_defense.parameters())


def test_a_violation_raises_instead_of_being_clipped(monkeypatch, trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 8)
    monkeypatch.setitem(WHITE_BOX, "fgsm", lambda d, b, p, e, s, c: (b.x + 2 * e).clamp(0, 1))
    with pytest.raises(AttackBoundsError, match="exceeds eps"):
        run_white_box("fgsm", trained_defense, batch, spec_dataset.attacks["fgsm"], EPS, seed=0)


def test_bounds_check_catches_out_of_range_and_nan():
    x = torch.full((2, 1, 4, 4), 0.5)
    with pytest.raises(AttackBoundsError, match=r"outside \[0, 1\]"):
        check_perturbation(torch.zeros_like(x), torch.full_like(x, -0.05), 0.1)
    with pytest.raises(AttackBoundsError, match="NaN"):
        check_perturbation(x, torch.full_like(x, float("nan")), 0.1)


def test_unknown_attack_name_is_a_clear_error(trained_defense, fashion_test_batch, spec_dataset):
    with pytest.raises(ThreatbenchError, match="unknown attack 'cw'.*fgsm"):
        run_white_box("cw", trained_defense, _batch(fashion_test_batch, 4), spec_dataset.attacks["fgsm"], EPS, 0)


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_eps_outside_the_unit_interval_is_rejected(eps, trained_defense, fashion_test_batch):
    x, y = fashion_test_batch
    with pytest.raises(ThreatbenchError, match="eps"):
        fgsm(trained_defense, x[:4], y[:4], eps=eps)


def test_eot_gradient_averages_draws(trained_mlp, fashion_test_batch):
    x, y = fashion_test_batch
    x, y = x[:16], y[:16]
    noisy = Defense(NoisyModel(trained_mlp, 0.2), 10, randomized=True)
    torch.manual_seed(1)
    averaged = input_gradient(noisy, x, y, draws=4)
    torch.manual_seed(1)
    draws = [input_gradient(noisy, x, y) for _ in range(4)]
    assert torch.allclose(averaged, sum(draws) / 4, atol=1e-6)
    deterministic = Defense(trained_mlp, 10)
    assert torch.allclose(input_gradient(deterministic, x, y, draws=3), input_gradient(deterministic, x, y),
                          atol=1e-6)


def test_pass_counter_counts_images(trained_defense, fashion_test_batch, spec_dataset):
    batch = _batch(fashion_test_batch, 10)
    counter = gradient.PassCounter()
    run_white_box("ifgsm", trained_defense, batch, spec_dataset.attacks["ifgsm"], EPS, 0, counter)
    assert counter.forward == counter.backward == 10 * spec_dataset.attacks["ifgsm"].steps
