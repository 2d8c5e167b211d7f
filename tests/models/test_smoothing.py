"""Smoothed inference as a Defense: exact vote counts, voting rules, chunking and noise independence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.errors import DefenseOutputError, ThreatbenchError
from benchmark.models.defense import Defense
from benchmark.models.noise_injection import inject_noise
from benchmark.models.smoothing import (
    SmoothedDefense,
    SmoothingConfig,
    SmoothingConfigError,
    class_ranks,
    smooth,
)


class PixelLogits(nn.Module):
    """Deterministic: the logits are the first `classes` pixels of each image."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return x.flatten(1)[:, :self.classes]


class ScriptedDraws(nn.Module):
    """Draw j (the j-th chunk of `batch` rows, counted across calls) returns `plan[j % len(plan)]`,
    rolled by the row's id (the first pixel times 10), so both draw and row alignment are checked."""

    def __init__(self, plan: list[list[float]], batch: int):
        super().__init__()
        self.plan, self.batch, self.draw = torch.tensor(plan), batch, 0

    def forward(self, x):
        rows = []
        for chunk in x.split(self.batch):
            for pixel in chunk.flatten(1)[:, 0]:
                rows.append(torch.roll(self.plan[self.draw % len(self.plan)], int(round(pixel.item() * 10))))
            self.draw += 1
        return torch.stack(rows)


def _row_ids(count: int) -> torch.Tensor:
    x = torch.zeros(count, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(count) / 10
    return x


# Three draws over 3 classes: each class wins once (a prediction tie), weighted favors class 1.
THREE_DRAWS = [[3.0, 2.0, 0.0], [0.0, 2.0, 3.0], [0.0, 3.0, 2.0]]


def _smoothed(model, classes, samples, vote, sigma=0.0, **kwargs) -> SmoothedDefense:
    return SmoothedDefense(model, classes, SmoothingConfig(samples, sigma, vote), **kwargs)


def test_prediction_vote_counts_are_exact():
    plan = [[0.0] * 10 for _ in range(4)]
    for draw, winner in enumerate([2, 5, 2, 2]):
        plan[draw][winner] = 1.0
    defense = _smoothed(ScriptedDraws(plan, batch=1), 10, 4, "prediction")
    scores = defense.scores(_row_ids(1))[0]
    expected = torch.zeros(10)
    expected[2], expected[5] = 0.75, 0.25
    assert torch.equal(scores, expected)


def test_votes_follow_each_row_and_each_draw():
    x = _row_ids(2)   # row 1 sees every plan rolled by one class
    defense = _smoothed(ScriptedDraws(THREE_DRAWS, batch=2), 3, 3, "weighted")
    scores = defense.scores(x)
    row0 = torch.tensor([1.5, 2.0, 1.75]) / 5.25
    assert torch.allclose(scores[0], row0, atol=1e-7)
    assert torch.allclose(scores[1], torch.roll(row0, 1), atol=1e-7)


def test_prediction_tie_goes_to_the_lowest_class_and_weighted_breaks_it():
    x = _row_ids(1)
    prediction = _smoothed(ScriptedDraws(THREE_DRAWS, batch=1), 3, 3, "prediction")
    assert torch.allclose(prediction.scores(x)[0], torch.full((3,), 1 / 3))
    assert prediction.predict(x).item() == 0
    weighted = _smoothed(ScriptedDraws(THREE_DRAWS, batch=1), 3, 3, "weighted")
    # ranks per draw: [0,1,2], [2,1,0], [2,0,1] -> 2^-rank sums 1.5, 2.0, 1.75
    assert weighted.predict(x).item() == 1


def test_tie_between_later_classes_picks_the_lower_one():
    plan = [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    defense = _smoothed(ScriptedDraws(plan, batch=1), 4, 2, "prediction")
    assert defense.predict(_row_ids(1)).item() == 1


def test_soft_vote_is_the_mean_of_softmax_probabilities():
    defense = _smoothed(ScriptedDraws(THREE_DRAWS, batch=1), 3, 3, "soft")
    expected = torch.softmax(torch.tensor(THREE_DRAWS, dtype=torch.float64), dim=1).mean(0)
    assert torch.allclose(defense.scores(_row_ids(1))[0].double(), expected, atol=1e-7)
    # SIAM's code averages logits instead; softmax of the mean logits is a different distribution.
    mean_logits = torch.softmax(torch.tensor(THREE_DRAWS, dtype=torch.float64).mean(0), dim=0)
    assert not torch.allclose(expected, mean_logits, atol=1e-2)


def test_deterministic_model_votes_exactly():
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0] = torch.tensor([0.1, 0.9])          # logits [0.1, 0.9, 0.0]  -> class 1
    x[1, 0, 1] = torch.tensor([0.7, 0.2])          # logits [0.0, 0.0, 0.7] -> class 2
    logits = PixelLogits(3)(x)
    hard = _smoothed(PixelLogits(3), 3, 5, "prediction")
    assert torch.equal(hard.scores(x), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert torch.equal(hard.predict(x), torch.tensor([1, 2]))
    soft = _smoothed(PixelLogits(3), 3, 5, "soft")
    assert torch.allclose(soft.scores(x), torch.softmax(logits, dim=1), atol=1e-6)
    weighted = _smoothed(PixelLogits(3), 3, 5, "weighted")
    # row 0 ranks [1, 0, 2], row 1 ranks [1, 2, 0] (equal logits: lower index first)
    expected = torch.tensor([[0.5, 1.0, 0.25], [0.5, 0.25, 1.0]]) / 1.75
    assert torch.allclose(weighted.scores(x), expected, atol=1e-7)


def test_class_ranks():
    ranks = class_ranks(torch.tensor([[0.2, 0.9, 0.2, -1.0]]))
    assert ranks.tolist() == [[1, 0, 2, 3]]


@pytest.mark.parametrize("max_batch", [1, 2, 3, 5])
def test_chunking_does_not_change_the_votes(max_batch):
    x = torch.rand(4, 1, 3, 3)
    reference = _smoothed(PixelLogits(5), 5, 7, "weighted").scores(x)
    chunked = _smoothed(PixelLogits(5), 5, 7, "weighted", max_batch=max_batch)
    assert torch.equal(chunked.scores(x), reference)


@pytest.mark.parametrize("max_batch", [2, 5, 4096])
def test_chunking_keeps_draws_aligned(max_batch):
    plan = THREE_DRAWS + [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    defense = _smoothed(ScriptedDraws(plan, batch=2), 3, 5, "prediction", max_batch=max_batch)
    scores = defense.scores(_row_ids(2))
    assert torch.allclose(scores[0], torch.tensor([0.4, 0.2, 0.4]))
    assert torch.allclose(scores[1], torch.tensor([0.4, 0.4, 0.2]))


def test_noisy_model_draws_independent_weight_noise():
    torch.manual_seed(0)
    network = inject_noise(nn.Sequential(nn.Flatten(), nn.Linear(4, 10)), "pni")
    with torch.no_grad():
        network[1].noise_alpha.fill_(50.0)
    defense = _smoothed(network, 10, 64, "prediction")
    scores = defense.scores(torch.rand(1, 1, 2, 2))
    # One shared draw would put all 64 votes on a single class.
    assert scores.max().item() < 1.0
    assert (scores > 0).sum().item() >= 3


def test_noise_memory_bound_limits_draws_per_pass():
    network = inject_noise(nn.Sequential(nn.Flatten(), nn.Linear(4, 10)), "pni")
    defense = _smoothed(network, 10, 64, "prediction", max_noise_elements=100, cpu_chunk=None)
    assert defense._draws_per_pass(torch.rand(1, 1, 2, 2)) == 2           # 100 // 40 weights
    assert defense.scores(torch.rand(3, 1, 2, 2)).shape == (3, 10)


def _noisy_conv_net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    return inject_noise(network.eval(), kind)


@pytest.mark.parametrize("kind", ["pni", "cni"])
def test_cpu_chunks_share_each_pass_draw_and_match_one_pass(kind):
    network = _noisy_conv_net(kind)
    x = torch.rand(5, 1, 8, 8)
    # max_batch = rows makes the unchunked pass one draw too, so both consume the same random stream.
    one_pass = _smoothed(network, 5, 6, "soft", sigma=0.1, max_batch=5, cpu_chunk=None)
    chunked = _smoothed(network, 5, 6, "soft", sigma=0.1, max_batch=5, cpu_chunk=2)
    assert chunked._draws_per_pass(x) == 1
    torch.manual_seed(4)
    expected = one_pass.log_scores(x)
    torch.manual_seed(4)
    actual = chunked.log_scores(x)
    assert torch.allclose(actual, expected, rtol=1e-6, atol=1e-9)
    torch.manual_seed(4)
    expected_votes = one_pass.predict(x)
    torch.manual_seed(4)
    assert torch.equal(chunked.predict(x), expected_votes)


def test_cpu_chunks_would_differ_if_each_chunk_drew_its_own_noise():
    network = _noisy_conv_net("pni")
    with torch.no_grad():
        for layer in network.modules():
            if hasattr(layer, "noise_alpha"):
                layer.noise_alpha.fill_(5.0)
    x = torch.rand(1, 1, 8, 8).repeat(4, 1, 1, 1)   # four copies of one image, one chunk each
    defense = _smoothed(network, 5, 1, "soft", cpu_chunk=1)
    scores = defense.log_scores(x)
    assert torch.equal(scores, scores[:1].expand_as(scores))   # one draw per pass, shared by the chunks


class CountingDefense(Defense):
    def __init__(self, model):
        super().__init__(model, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_a_defense_model_is_never_chunked():
    wrapped = CountingDefense(_noisy_conv_net("pni"))
    defense = _smoothed(wrapped, 5, 4, "prediction", cpu_chunk=1)
    defense.predict(torch.rand(3, 1, 8, 8))
    assert wrapped.calls == 1      # all 4 draws of the 3 rows in one grouped pass


def test_cpu_chunk_must_be_positive():
    with pytest.raises(SmoothingConfigError, match="cpu_chunk"):
        _smoothed(PixelLogits(3), 3, 2, "soft", cpu_chunk=0)


def test_interface_types_and_one_draw_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    defense = _smoothed(model, 4, 8, "prediction", sigma=0.25)
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    assert defense.randomized is True
    prediction = defense.predict(x)
    assert prediction.dtype == torch.long and prediction.shape == (3,)
    logits = defense(x)
    assert logits.shape == (3, 4)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not torch.equal(defense(x), defense(x))   # one fresh draw per call


def test_input_noise_is_not_clipped():
    torch.manual_seed(0)
    defense = _smoothed(PixelLogits(16), 16, 1, "prediction", sigma=0.5)
    logits = defense(torch.zeros(4, 1, 4, 4))
    assert logits.min() < 0 and logits.std().item() == pytest.approx(0.5, rel=0.3)


def test_output_checks_still_apply():
    wrong_shape = _smoothed(PixelLogits(3), 4, 2, "prediction")
    with pytest.raises(DefenseOutputError):
        wrong_shape.predict(torch.rand(2, 1, 2, 2))
    not_finite = _smoothed(PixelLogits(3), 3, 2, "soft")
    with pytest.raises(DefenseOutputError):
        not_finite.scores(torch.full((2, 1, 2, 2), float("nan")))


@pytest.mark.parametrize(("field", "kwargs"), [
    ("vote", {"samples": 4, "sigma": 0.1, "vote": "median"}),
    ("samples", {"samples": 0, "sigma": 0.1, "vote": "soft"}),
    ("samples", {"samples": 2.5, "sigma": 0.1, "vote": "soft"}),
    ("sigma", {"samples": 4, "sigma": -1.0, "vote": "soft"}),
    ("sigma", {"samples": 4, "sigma": float("nan"), "vote": "soft"}),
])
def test_invalid_configs_name_the_field(field, kwargs):
    with pytest.raises(SmoothingConfigError, match=field) as caught:
        SmoothingConfig(**kwargs)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ThreatbenchError)


def test_smooth_wraps_a_defense_or_a_bare_model():
    base = Defense(PixelLogits(3), 3, name="pixels")
    smoothed = smooth(base, SmoothingConfig(3, 0.0, "prediction"))
    assert isinstance(smoothed, SmoothedDefense) and smoothed.name.startswith("pixels+smooth")
    assert smoothed.num_classes == 3 and smoothed.randomized
    bare = smooth(PixelLogits(3), SmoothingConfig(3, 0.0, "soft"), num_classes=3, name="s")
    assert bare.name == "s"
    with pytest.raises(SmoothingConfigError, match="num_classes"):
        smooth(PixelLogits(3), SmoothingConfig(3, 0.0, "soft"))


def test_seeded_predictions_are_reproducible():
    model = inject_noise(nn.Sequential(nn.Flatten(), nn.Linear(16, 5)), "cni")
    defense = _smoothed(model, 5, 16, "soft", sigma=0.3)
    x = torch.rand(3, 1, 4, 4)
    torch.manual_seed(3)
    first = defense.scores(x)
    torch.manual_seed(3)
    assert torch.equal(defense.scores(x), first)


def test_step_ll_targets_the_argmin_of_the_mean_softmax_not_tied_votes(trained_mlp, fashion_test_batch):
    """Vote fractions tie at 0 for most classes, and their argmin was class 0 for 91% of examples."""
    from benchmark.attacks.gradient import least_likely_labels
    from benchmark.models.defense import Defense

    x = fashion_test_batch[0][:64]
    smoothed = smooth(Defense(trained_mlp, 10), SmoothingConfig(samples=8, sigma=0.05))
    targets = least_likely_labels(smoothed, x)
    assert (targets == 0).float().mean() < 0.5
    assert len(set(targets.tolist())) >= 3
    mean_softmax = smoothed.log_scores(x).exp()   # fresh draws: the argmin agrees on most examples
    assert (targets == mean_softmax.argmin(dim=1)).float().mean() > 0.8


def test_a_judged_smoothed_entry_is_scored_in_chunks_on_a_cpu(tmp_path):
    """The judge's path (architecture + weights file + smoothing) hands SmoothedDefense a bare model."""
    from safetensors.torch import save_file

    from benchmark.models.architectures import build
    from benchmark.models.defense import file_sha256
    from benchmark.models.entries import judged_defense

    path = tmp_path / "pni.safetensors"
    save_file({k: v.contiguous() for k, v in build("pni:mnist_a", 10).network.state_dict().items()}, str(path))
    defense = judged_defense("pni:mnist_a", path, sha256=file_sha256(path), num_classes=10, in_channels=1,
                             name="e", randomized=True, smoothing={"samples": 4, "sigma": 0.06})
    x = torch.rand(3, 1, 28, 28)
    assert isinstance(defense, SmoothedDefense) and defense._chunked(x)
    assert defense.log_scores(x).shape == (3, 10)
