"""NAttack: finds adversarial examples where PGD shows they exist, stays in bounds, counts queries."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.attacks.gradient import AttackBatch, run_white_box
from benchmark.attacks.nattack import candidate_images, margin_loss, nattack, to_tanh_space
from benchmark.defense import Defense
from benchmark.spec import load_spec

EPS = 0.1


@pytest.fixture(scope="module")
def fashion():
    return load_spec().dataset("fashion-mnist")


class CountingDefense(Defense):
    """Counts the images passed to `scores`, the only call NAttack may make."""

    def __init__(self, model):
        super().__init__(model, 10, name="counting")
        self.scored = 0

    def scores(self, x):
        self.scored += x.shape[0]
        return super().scores(x)

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            pytest.fail("NAttack asked for a gradient")
        return super().forward(x)


def _pgd_breakable(defense, x, y, fashion):
    batch = AttackBatch(x=x, y=y, indices=torch.arange(len(x)))
    x_adv = run_white_box("pgd", defense, batch, fashion.attacks["pgd"], EPS, seed=0)
    return (defense.predict(x) == y) & (defense.predict(x_adv) != y)


def test_nattack_finds_adversarial_examples_where_pgd_proves_they_exist(trained_mlp, fashion_test_batch, fashion):
    x, y = fashion_test_batch
    x, y = x[:24], y[:24]
    breakable = _pgd_breakable(Defense(trained_mlp, 10), x, y, fashion)
    assert breakable.sum() >= 10
    defense = CountingDefense(trained_mlp)
    result = nattack(defense, x, y, torch.arange(len(x)), eps=EPS, params=fashion.nattack, seed=0,
                     max_iterations=200)
    found = ~result.correct & breakable
    assert found.sum() >= 0.8 * breakable.sum()
    assert int(result.queries.sum()) == defense.scored, "every query is counted, exactly once"
    assert (result.x_adv - x).abs().max() <= EPS + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    fooled = ~result.correct & (defense.predict(x) == y)
    assert (defense.predict(result.x_adv[fooled]) != y[fooled]).all()


def test_queries_follow_the_schedule_and_success_stops_early(trained_mlp, fashion_test_batch, fashion):
    x, y = fashion_test_batch
    defense = CountingDefense(trained_mlp)
    clean_correct = defense.predict(x[:16]) == y[:16]
    result = nattack(defense, x[:16], y[:16], torch.arange(16), eps=EPS, params=fashion.nattack, seed=0,
                     max_iterations=60)
    population, every = fashion.nattack.population, fashion.nattack.check_every
    for i in range(16):
        iterations = int(result.iterations[i])
        if not clean_correct[i]:
            assert int(result.queries[i]) == 1 and iterations == 0, "misclassified images are skipped"
            continue
        checks = -(-iterations // every) if result.correct[i] else iterations // every + 1
        assert int(result.queries[i]) == 1 + iterations * population + checks
        if not result.correct[i]:
            assert iterations % every == 0 and iterations < 60, "stopped at the check that succeeded"
        else:
            assert iterations == 60


def test_results_do_not_depend_on_the_batch_layout(trained_mlp, fashion_test_batch, fashion):
    x, y = fashion_test_batch
    defense = Defense(trained_mlp, 10)
    params = dataclasses.replace(fashion.nattack, population=40)
    whole = nattack(defense, x[:8], y[:8], torch.arange(8), eps=EPS, params=params, seed=1, max_iterations=30)
    parts = [nattack(defense, x[s:s + 4], y[s:s + 4], torch.arange(s, s + 4), eps=EPS, params=params, seed=1,
                     max_iterations=30) for s in (0, 4)]
    assert torch.equal(whole.correct, torch.cat([p.correct for p in parts]))
    assert torch.equal(whole.queries, torch.cat([p.queries for p in parts]))


def test_margin_loss_takes_the_runner_up_per_row():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1]])
    labels = torch.tensor([0, 0, 0])
    loss = margin_loss(probabilities, labels)
    expected = torch.tensor([torch.log(torch.tensor(0.7 / 0.2)), torch.log(torch.tensor(0.5 / 0.4)), 0.0])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_candidates_stay_in_the_ball_and_range_for_any_z():
    x = torch.rand(3, 1, 28, 28)
    z = 5 * torch.randn(3, 7, 1, 28, 28)
    images = candidate_images(to_tanh_space(x), x, z, 0.1)
    assert images.shape == (3, 7, 1, 28, 28)
    assert (images - x[:, None]).abs().max() <= 0.1 + 1e-6
    assert images.min() >= 0 and images.max() <= 1


def test_imagenet_search_space_is_upsampled():
    x = torch.rand(2, 3, 64, 64)
    z = torch.randn(2, 4, 3, 32, 32)
    assert candidate_images(to_tanh_space(x), x, z, 0.0625).shape == (2, 4, 3, 64, 64)
