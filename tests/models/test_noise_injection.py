"""PNI-W and CNI-W weight-noise layers, the `pni:` / `cni:` registry names, and noise groups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional

from benchmark.errors import ArchitectureError
from benchmark.models.architectures import build, registry_names
from benchmark.models.noise_injection import (
    NoisyConv2d,
    NoisyLayer,
    NoisyLinear,
    held_noise_draws,
    inject_noise,
    is_noisy,
    largest_noisy_weight,
    noise_groups,
    noisy_layers,
    scale_noise_to_weights,
)
from benchmark.runtime.randomness import seed_model_noise


def tiny_net() -> nn.Module:
    """conv (1*4*3*3 = 36 weights) -> linear (4*6*6*3 = 432 weights), on 8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def _layers(module: nn.Module) -> list[NoisyLayer]:
    return noisy_layers(module)


# ---------------------------------------------------------------- PNI-W


def test_pni_noise_is_on_in_eval():
    model = build("pni:mnist_a", 10).eval()
    x = torch.rand(2, 1, 28, 28)
    assert not torch.allclose(model(x), model(x))


def test_pni_alpha_is_a_layerwise_scalar_init_025_that_learns():
    model = build("pni:mnist_a", 10).eval()
    layers = _layers(model)
    assert len(layers) == 4 and all(layer.noise_kind == "pni" for layer in layers)
    for layer in layers:
        assert layer.noise_alpha.shape == ()
        assert layer.noise_alpha.item() == 0.25
    loss = functional.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for layer in layers:
        assert layer.noise_alpha.grad is not None and layer.noise_alpha.grad.abs() > 0
        assert layer.weight.grad is not None


def test_pni_state_dict_is_the_base_keys_plus_alpha():
    base = build("mnist_a", 10).network
    noisy = inject_noise(copy.deepcopy(base), "pni")
    alphas = {f"{index}.noise_alpha" for index in (0, 2, 6, 9)}
    assert set(noisy.state_dict()) == set(base.state_dict()) | alphas
    for key, value in base.state_dict().items():
        assert torch.equal(noisy.state_dict()[key], value)


def test_inject_noise_reuses_the_original_parameters():
    network = tiny_net()
    weight, bias = network[0].weight, network[0].bias
    inject_noise(network, "pni")
    assert isinstance(network[0], NoisyConv2d) and isinstance(network[3], NoisyLinear)
    assert network[0].weight is weight and network[0].bias is bias


def test_pni_with_zero_alpha_equals_the_base_network():
    base = build("mnist_a", 10).network.eval()
    noisy = inject_noise(copy.deepcopy(base), "pni")
    with torch.no_grad():
        for layer in _layers(noisy):
            layer.noise_alpha.zero_()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(noisy(x), base(x))


def test_pni_noise_std_is_alpha_times_weight_std():
    layer = inject_noise(nn.Sequential(nn.Linear(50, 40)), "pni")[0]
    with torch.no_grad():
        layer.noise_alpha.fill_(0.5)
    torch.manual_seed(0)
    noise = layer.sample_weight_noise(200)
    assert noise.shape == (200, 40, 50)
    expected = 0.5 * layer.weight.detach().std()
    assert noise.std().item() == pytest.approx(expected.item(), rel=0.02)


# ---------------------------------------------------------------- CNI-W


def test_cni_parameters_have_the_reference_shapes_and_inits():
    network = inject_noise(tiny_net(), "cni", rank=5)
    for layer in _layers(network):
        d = layer.weight.numel()
        assert layer.noise_kind == "cni" and not hasattr(layer, "noise_alpha")
        assert layer.noise_diag.shape == (d,)
        assert torch.all(layer.noise_diag == 0.0625)
        assert layer.noise_factor.shape == (d, 5)
        assert torch.all(layer.noise_factor == 0.01)


def test_cni_rank_is_configurable():
    network = inject_noise(tiny_net(), "cni", rank=2)
    assert network[0].noise_factor.shape == (36, 2)


def test_cni_layers_above_the_size_limit_get_pni_noise():
    network = inject_noise(tiny_net(), "cni", max_colored_weights=100)
    conv, linear = network[0], network[3]
    assert conv.noise_kind == "cni" and hasattr(conv, "noise_factor")
    assert linear.noise_kind == "pni" and linear.noise_alpha.item() == 0.25
    assert not hasattr(linear, "noise_diag") and not hasattr(linear, "noise_factor")


def test_cni_mnist_a_uses_pni_on_its_dense_layer_by_default():
    network = build("cni:mnist_a", 10).network
    assert [layer.noise_kind for layer in _layers(network)] == ["cni", "cni", "pni", "cni"]
    assert network[6].weight.numel() == 25600 * 128 and hasattr(network[6], "noise_alpha")
    assert network[2].noise_factor.shape == (64 * 64 * 5 * 5, 5)


def test_cni_gradients_reach_diag_and_factor_and_noise_is_on_in_eval():
    network = inject_noise(tiny_net(), "cni")
    x = torch.rand(4, 1, 8, 8)
    assert not torch.allclose(network(x), network(x))
    functional.cross_entropy(network(x), torch.tensor([0, 1, 2, 0])).backward()
    for layer in _layers(network):
        assert layer.noise_diag.grad is not None and layer.noise_diag.grad.abs().sum() > 0
        assert layer.noise_factor.grad is not None and layer.noise_factor.grad.abs().sum() > 0


def test_cni_noise_covariance_is_diagonal_plus_low_rank():
    layer = inject_noise(nn.Sequential(nn.Linear(2, 2, bias=False)), "cni", rank=2)[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
        layer.noise_diag.copy_(torch.tensor([0.5, 1.0, 0.25, 2.0]))
        layer.noise_factor.copy_(torch.tensor([[0.6, 0.0], [0.3, 0.4], [0.0, -0.5], [0.2, 0.2]]))
        torch.manual_seed(0)
        noise = layer.sample_weight_noise(100_000).view(-1, 4)
        scale = layer.weight.std()
        expected = torch.diag((scale * layer.noise_diag).abs() + 1e-8)
        expected += layer.noise_factor @ layer.noise_factor.T
    empirical = torch.cov(noise.T)
    assert torch.allclose(empirical, expected, atol=0.03)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["pni:mnist_a", "cni:mnist_a"])
def test_registry_builds_noisy_mnist_models(name):
    classifier = build(name, 10).eval()
    assert is_noisy(classifier) and not is_noisy(build("mnist_a", 10))
    assert classifier(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_registry_builds_noisy_resnet20_and_lists_the_prefixes():
    classifier = build("cni:resnet20", 10).eval()
    assert len(_layers(classifier)) == 22   # 19 3x3 convs + 2 shortcut convs + fc
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert any(n.startswith("pni:") for n in registry_names())
    assert any(n.startswith("cni:") for n in registry_names())


@pytest.mark.parametrize("name", ["pni:nope", "cni:", "pni:cni:mnist_a"])
def test_registry_rejects_bad_noisy_names(name):
    with pytest.raises(ArchitectureError):
        build(name, 10)


def test_inject_noise_rejects_an_unknown_kind():
    with pytest.raises(ArchitectureError, match="kind"):
        inject_noise(tiny_net(), "gaussian")


def test_subclassed_layers_are_left_clean_with_a_warning():
    class CustomLinear(nn.Linear):
        pass

    network = nn.Sequential(nn.Linear(3, 3), CustomLinear(3, 3))
    with pytest.warns(UserWarning, match="CustomLinear"):
        inject_noise(network, "pni")
    assert isinstance(network[0], NoisyLinear) and type(network[1]) is CustomLinear


# ---------------------------------------------------------------- seeding and noise groups


def test_seeded_global_generator_reproduces_the_noise():
    model = build("pni:mnist_a", 10).eval()
    x = torch.rand(2, 1, 28, 28)
    seed_model_noise(7, "test", 0)
    first = model(x)
    seed_model_noise(7, "test", 0)
    assert torch.equal(model(x), first)


def _two_chunks_of_one_row(shape):
    row = torch.rand(1, *shape)
    return torch.cat([row, row])


@pytest.mark.parametrize("kind", ["pni", "cni"])
def test_noise_groups_give_each_chunk_its_own_draw(kind):
    network = inject_noise(tiny_net(), kind)
    x = _two_chunks_of_one_row((1, 8, 8))
    shared = network(x)
    assert torch.allclose(shared[0], shared[1], rtol=1e-6, atol=1e-6)
    with noise_groups(network, 2):
        independent = network(x)
    assert (independent[0] - independent[1]).abs().max() > 1e-3
    assert all(layer.noise_groups == 1 for layer in _layers(network))   # restored on exit


def test_grouped_conv_matches_one_conv_per_draw():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    layer = inject_noise(nn.Sequential(conv), "cni")[0]
    x = torch.rand(3 * 2, 4, 9, 9)
    torch.manual_seed(5)
    weights = layer.noisy_weights(3)
    expected = torch.cat([
        functional.conv2d(chunk, weights[g], layer.bias, 2, 1, 1, 2)
        for g, chunk in enumerate(x.split(2))
    ])
    torch.manual_seed(5)
    with noise_groups(layer, 3):
        actual = layer(x)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_grouped_linear_matches_one_matmul_per_draw_with_extra_dims():
    torch.manual_seed(1)
    layer = inject_noise(nn.Sequential(nn.Linear(5, 4)), "pni")[0]
    x = torch.rand(3 * 2, 7, 5)
    torch.manual_seed(5)
    weights = layer.noisy_weights(3)
    expected = torch.cat([
        functional.linear(chunk, weights[g], layer.bias) for g, chunk in enumerate(x.split(2))
    ])
    torch.manual_seed(5)
    with noise_groups(layer, 3):
        actual = layer(x)
    assert actual.shape == (6, 7, 4)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_noise_groups_reject_an_uneven_batch_and_restore_after_errors():
    network = inject_noise(tiny_net(), "pni")
    with pytest.raises(ValueError, match="noise groups"), noise_groups(network, 2):
        network(torch.rand(3, 1, 8, 8))
    assert all(layer.noise_groups == 1 for layer in _layers(network))
    with pytest.raises(ValueError, match="positive"), noise_groups(network, 0):
        pass


@pytest.mark.parametrize("kind", ["pni", "cni"])
def test_held_noise_draws_score_chunks_as_one_pass_with_the_same_random_stream(kind):
    network = inject_noise(tiny_net(), kind)
    x = torch.rand(3 * 4, 1, 8, 8)
    by_draw = x.view(3, 4, 1, 8, 8)
    torch.manual_seed(5)
    with torch.no_grad(), noise_groups(network, 3):
        one_pass = network(x).view(3, 4, 3)
    torch.manual_seed(5)
    with torch.no_grad(), noise_groups(network, 3), held_noise_draws(network):
        chunks = [network(by_draw[:, rows].flatten(0, 1)).view(3, -1, 3) for rows in (slice(0, 1), slice(1, 4))]
    # Same draws; only float summation order may differ (a kernel picked by the chunk's size).
    assert torch.allclose(torch.cat(chunks, dim=1), one_pass, rtol=1e-6, atol=1e-7)
    assert torch.equal(torch.get_rng_state(), _state_after_one_pass(network, x))


def _state_after_one_pass(network, x):
    torch.manual_seed(5)
    with torch.no_grad(), noise_groups(network, 3):
        network(x)
    return torch.get_rng_state()


def test_held_noise_draws_are_dropped_on_exit_and_do_not_nest():
    network = inject_noise(tiny_net(), "pni")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad(), held_noise_draws(network):
        assert torch.equal(network(x), network(x))
        with pytest.raises(ValueError, match="does not nest"), held_noise_draws(network):
            pass
        with pytest.raises(ValueError, match="2 noise draws asked while 1"), noise_groups(network, 2):
            network(x)
    assert all(layer.held_weights is None and not layer.holding_noise for layer in _layers(network))
    with torch.no_grad():
        assert not torch.equal(network(x), network(x))


def test_largest_noisy_weight():
    assert largest_noisy_weight(inject_noise(tiny_net(), "pni")) == 432
    assert largest_noisy_weight(tiny_net()) == 0


def test_weight_relative_init_makes_cni_noise_a_fixed_fraction_of_each_layers_weight_std():
    torch.manual_seed(0)
    network = build("cni:mnist_a", 10).network
    scale_noise_to_weights(network)
    expected = (0.25 ** 2 + 0.1 ** 2) ** 0.5   # diagonal 0.25 std(W), low-rank part 0.1 std(W)
    for layer in noisy_layers(network):
        with torch.no_grad():
            ratio = float(layer.sample_weight_noise(400).std() / layer.weight.std())
        # PNI-W fallback layers keep alpha 0.25; CNI layers get both parts, whatever std(W) is
        assert ratio == pytest.approx(0.25 if layer.noise_kind == "pni" else expected, rel=0.05)
    stds = [float(layer.weight.std()) for layer in noisy_layers(network)]
    assert max(stds) / min(stds) > 5, "the layers' weight scales differ, so the test means something"
