"""Consistency checks that refuse stateful or gradient-dependent defenses (benchmark/evaluation/checks/).

The checks seed their own model noise, so every run of this file draws the same numbers: running it
again says nothing about false refusals. They were measured instead over 500 seeds (100 for smoothing),
each with its own probe batch, for this file's honest randomized defenses: 0 refusals, every p-value
fraction at or below its level (docs/threat-model-checks.md, "Measured false refusals").
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from benchmark.errors import StatefulDefenseError, ThreatbenchError
from benchmark.evaluation.checks import check_defense_is_consistent
from benchmark.evaluation.checks.probe import (
    BATCH,
    GRAD_MODE,
    HISTORY,
    aimed_neighbours,
    odd_chunk_sizes,
)
from benchmark.evaluation.checks.randomized import ALPHA, permutation_p_value, smallest_p_value
from benchmark.models.defense import Defense, probe_randomness
from benchmark.models.noise_injection import inject_noise
from benchmark.models.smoothing import SmoothedDefense, SmoothingConfig
from tests.conftest import NoisyModel

EPS = 0.1       # Fashion-MNIST's eps in the spec
SEED = 0


def small_cnn(seed: int = 0) -> nn.Module:
    """Random init is enough: these checks never look at accuracy."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Hundreds of calls on a few images each: with the cores shared, more threads only wait for each
    # other (a randomized check took 7.7 s with 2 threads on a loaded 2-core machine, 0.1 s with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(fashion_test_batch) -> torch.Tensor:
    return fashion_test_batch[0][:32]


def check(defense: Defense, x: torch.Tensor, *, randomized: bool | None = None, seed: int = SEED) -> None:
    randomized = defense.randomized if randomized is None else randomized
    check_defense_is_consistent(defense, x, eps=EPS, seed=seed, randomized=randomized)


def refusal(defense: Defense, x: torch.Tensor, **kwargs) -> StatefulDefenseError:
    with pytest.raises(StatefulDefenseError) as caught:
        check(defense, x, **kwargs)
    assert isinstance(caught.value, ThreatbenchError)
    assert "\n" not in str(caught.value)
    return caught.value


# ---------------------------------------------------------------- cheats


class Memoriser(nn.Module):
    """Honest under grad; under no_grad, any input within eps of one seen before gets that answer."""

    def __init__(self, model: nn.Module, eps: float = EPS):
        super().__init__()
        self.model, self.eps = model, eps
        self.seen: list[torch.Tensor] = []
        self.answers: list[torch.Tensor] = []

    def forward(self, x):
        honest = self.model(x)
        if torch.is_grad_enabled():
            return honest
        out = honest.clone()
        for row in range(x.shape[0]):
            if self.seen:
                distances = (torch.stack(self.seen) - x[row]).abs().flatten(1).amax(dim=1)
                close = torch.nonzero(distances <= self.eps + 1e-6)
                if len(close):
                    out[row] = self.answers[int(close[0])]
                    continue
            self.seen.append(x[row].clone())
            self.answers.append(honest[row].clone())
        return out


class GradSwitcher(nn.Module):
    """Another answer under no_grad."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits if torch.is_grad_enabled() else logits.roll(1, dims=1)


class BatchStatistics(nn.Module):
    """Normalizes by the batch mean: answers depend on the batch's composition."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x - x.mean(dim=0, keepdim=True) + 0.5)


class CallCounter(nn.Module):
    """Every third call answers differently."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        logits = self.model(x)
        return logits.roll(1, dims=1) if self.calls % 3 == 0 else logits


class FirstRowFlipper(nn.Module):
    """Changes the answer of the first row of every batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x).clone()
        logits[0] = logits[0].roll(1)
        return logits


class CutGradient(nn.Module):
    """Honest, with no gradient path to the input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x > 0.5).float())


# ---------------------------------------------------------------- honest defenses pass


def test_honest_deterministic_model_passes(trained_mlp, images):
    check(Defense(trained_mlp, 10, name="mlp"), images)


def test_cut_gradient_passes(trained_mlp, images):
    check(Defense(CutGradient(trained_mlp), 10, name="binarized"), images)


def test_cut_gradient_neighbours_are_seeded_random_corners(trained_mlp, images):
    defense = Defense(CutGradient(trained_mlp), 10)
    first, _ = aimed_neighbours(defense, images, EPS, SEED)
    again, _ = aimed_neighbours(defense, images, EPS, SEED)
    assert torch.equal(first, again)
    inside = (first - images).abs().amax() <= EPS + 1e-6
    assert inside and first.min() >= 0 and first.max() <= 1


def test_aimed_neighbours_change_honest_answers(trained_mlp, images):
    # A memoriser is caught only where the honest answer of a neighbour differs from the clean one.
    defense = Defense(trained_mlp, 10)
    neighbours, logits = aimed_neighbours(defense, images, EPS, SEED)
    changed = (defense.predict(neighbours) != logits.argmax(dim=1)).sum()
    assert changed >= len(images) // 4


def test_honest_randomized_input_noise_passes(trained_mlp, images):
    check(Defense(NoisyModel(trained_mlp, sigma=0.1), 10, randomized=True, name="noisy"), images)


def test_pni_model_passes(images):
    network = inject_noise(small_cnn(), "pni")
    check(Defense(network, 10, randomized=True, name="pni"), images)


@pytest.mark.parametrize("weight_noise", [False, True])
def test_smoothed_defense_passes(images, weight_noise):
    # forward is one draw and predict a vote over 8: different distributions, compared separately.
    network = inject_noise(small_cnn(), "pni") if weight_noise else small_cnn()
    check(SmoothedDefense(network, 10, SmoothingConfig(samples=8, sigma=0.1)), images[:16])


def test_batch_norm_in_eval_mode_passes(images):
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 26 * 26, 10))
    check(Defense(network, 10, name="bn"), images)


# ---------------------------------------------------------------- cheats are refused, by name


def test_memoriser_is_refused_by_history(trained_mlp, images):
    error = refusal(Defense(Memoriser(trained_mlp), 10, name="memoriser"), images)
    assert error.check == HISTORY
    assert str(error).startswith("memoriser: refused by the history check: ")


def test_memoriser_that_already_saw_the_probe_is_refused(trained_mlp, images):
    # In evaluate the probe batch has been asked before (check_defense_output, probe_randomness).
    defense = Defense(Memoriser(trained_mlp), 10, name="memoriser")
    assert not probe_randomness(defense, images)
    assert refusal(defense, images).check == HISTORY


def test_memoriser_is_refused_with_a_cut_gradient(trained_mlp, images):
    # No gradient to aim with: the random corners still cross the honest boundary for a few inputs.
    defense = Defense(Memoriser(CutGradient(trained_mlp)), 10, name="memoriser")
    assert refusal(defense, images).check == HISTORY


def test_grad_switcher_is_refused_by_grad_mode(trained_mlp, images):
    error = refusal(Defense(GradSwitcher(trained_mlp), 10, name="switcher"), images)
    assert error.check == GRAD_MODE
    assert "predictions depend on whether gradients are enabled" in str(error)
    assert f"on {len(images)} of {len(images)} clean inputs" in str(error)


def test_batch_statistics_are_refused_by_batch(images):
    error = refusal(Defense(BatchStatistics(small_cnn()), 10, name="batchstat"), images)
    assert error.check == BATCH
    assert "predictions depend on the batch an input is in" in str(error)


def test_call_counter_is_refused_by_history(trained_mlp, images):
    error = refusal(Defense(CallCounter(trained_mlp), 10, name="counter"), images)
    assert error.check == HISTORY
    assert "repeating the same call" in str(error)


def test_first_row_flipper_is_refused_by_batch(trained_mlp, images):
    assert refusal(Defense(FirstRowFlipper(trained_mlp), 10, name="flipper"), images).check == BATCH


def test_undeclared_cheats_are_refused_as_randomized_too(trained_mlp, images):
    # evaluate passes randomized=True when the probe detects randomness; a deterministic cheat is
    # then judged in distribution, and still refused.
    for model, name in ((GradSwitcher(trained_mlp), GRAD_MODE), (Memoriser(trained_mlp), HISTORY),
                        (FirstRowFlipper(trained_mlp), BATCH), (BatchStatistics(small_cnn()), BATCH)):
        assert refusal(Defense(model, 10), images, randomized=True).check == name


def test_randomized_cheats_are_refused(trained_mlp, images):
    noisy = NoisyModel(trained_mlp, sigma=0.1)
    # A noisy memoriser's no_grad answers repeat the first draw it saw: the grad-mode check sees that
    # before the history check runs.
    cases = ((GradSwitcher(noisy), {GRAD_MODE}), (Memoriser(noisy), {GRAD_MODE, HISTORY}),
             (FirstRowFlipper(noisy), {BATCH}), (BatchStatistics(NoisyModel(small_cnn(), 0.1)), {BATCH}))
    for model, names in cases:
        error = refusal(Defense(model, 10, randomized=True, name="noisy-cheat"), images)
        assert error.check in names
        assert "exact permutation test" in str(error)


def test_predict_that_is_not_the_argmax_of_forward_is_refused(images):
    class Argmin(Defense):
        @torch.no_grad()
        def predict(self, x):
            return self.forward(x).argmin(dim=1)

    error = refusal(Argmin(small_cnn(), 10, name="argmin"), images)
    assert error.check == GRAD_MODE
    assert "predict does not answer the argmax of forward" in str(error)


def test_randomized_grad_switch_inside_predict_is_refused(images):
    class PredictSwitcher(Defense):
        def predict(self, x):   # no @torch.no_grad(): it can see the caller's grad mode
            labels = self.forward(x).argmax(dim=1)
            return labels if torch.is_grad_enabled() else (labels + 1) % self.num_classes

    defense = PredictSwitcher(NoisyModel(small_cnn(), 0.1), 10, randomized=True)
    assert refusal(defense, images).check == GRAD_MODE


# ---------------------------------------------------------------- side effects


@pytest.mark.parametrize("randomized", [False, True])
def test_rng_state_parameters_and_mode_are_unchanged(images, randomized):
    network = inject_noise(small_cnn(), "pni") if randomized else small_cnn()
    defense = Defense(network, 10, randomized=randomized)
    parameters = copy.deepcopy(defense.state_dict())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    check(defense, images[:8])
    assert torch.equal(torch.get_rng_state(), state)
    assert not defense.training and not network.training
    for key, value in defense.state_dict().items():
        assert torch.equal(value, parameters[key]), key
    assert all(p.grad is None and not p.requires_grad for p in defense.parameters())


def test_a_refusal_also_restores_the_rng_state(trained_mlp, images):
    state = torch.get_rng_state()
    refusal(Defense(GradSwitcher(NoisyModel(trained_mlp)), 10, randomized=True), images[:8])
    assert torch.equal(torch.get_rng_state(), state)


def test_checks_of_a_randomized_defense_are_reproducible(images):
    defense = Defense(GradSwitcher(NoisyModel(small_cnn(), 0.1)), 10, randomized=True)
    messages = {str(refusal(defense, images[:16])) for _ in range(2)}
    assert len(messages) == 1


# ---------------------------------------------------------------- the test statistic


def brute_force_p_value(first: list[int], second: list[int]) -> float:
    values, size = first + second, len(first)
    centre = sum(values) * size / len(values)
    splits = [sum(values[i] for i in chosen) for chosen in itertools.combinations(range(len(values)), size)]
    extreme = [s for s in splits if abs(s - centre) >= abs(sum(first) - centre) - 1e-9]
    return len(extreme) / len(splits)


@pytest.mark.parametrize("first, second", [
    ([3, 5, 4, 6], [2, 2, 3, 1]),
    ([0, 0, 1], [1, 0, 0]),
    ([7, 7, 7, 7, 7], [0, 1, 0, 2, 1]),
    ([4, 2, 9], [9, 4, 2]),
])
def test_permutation_p_value_is_exact(first, second):
    assert permutation_p_value(first, second) == pytest.approx(brute_force_p_value(first, second))


def test_separated_rounds_are_refused_and_mixed_ones_are_not():
    assert smallest_p_value() == pytest.approx(2 / math.comb(32, 16))
    assert permutation_p_value([10] * 16, [3] * 16) == pytest.approx(smallest_p_value())
    assert permutation_p_value([10] * 15 + [2], [3] * 15 + [9]) < ALPHA      # one round crossed over
    assert permutation_p_value([10] * 13 + [2] * 3, [3] * 13 + [9] * 3) > ALPHA
    assert permutation_p_value([5, 6] * 8, [6, 5] * 8) == 1.0


def test_odd_chunk_sizes_cover_the_batch():
    assert odd_chunk_sizes(64) == [1, 1, 1, 3, 5, 7, 9, 11, 13, 13]
    for total in range(1, 130):
        sizes = odd_chunk_sizes(total)
        assert sum(sizes) == total and min(sizes) >= 1
