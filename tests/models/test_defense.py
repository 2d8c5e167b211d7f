"""The architecture registry, safe weight loading, and the Defense interface (docs/threat-model.md)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from benchmark.errors import ArchitectureError, DefenseOutputError, ThreatbenchError, WeightsError
from benchmark.models.architectures import ImageClassifier, build, registry_names
from benchmark.models.defense import Defense, file_sha256, load, probe_randomness, read_safetensors
from benchmark.models.networks import CIFAR10_MEAN, CIFAR10_STD
from tests.conftest import NoisyModel, small_mlp

# ---------------------------------------------------------------- architectures


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["mnist_a", "mnist_b", "mnist_c", "mnist_d"])
def test_mnist_family_output_shape(name):
    classifier = build(name, 10).eval()
    assert isinstance(classifier, ImageClassifier)
    assert not classifier.normalized   # MNIST models see raw [0, 1] pixels
    assert classifier(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet20_output_shape_and_normalization(num_classes):
    classifier = build("resnet20", num_classes).eval()
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, num_classes)
    assert classifier.mean.flatten().tolist() == pytest.approx(CIFAR10_MEAN)
    assert classifier.std.flatten().tolist() == pytest.approx(CIFAR10_STD)
    # 3 stages x 3 blocks x 2 convs + the stem = 19 convolutions (+ 2 shortcut convs, option B)
    convs = [m for m in classifier.network.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 19
    assert _param_count(classifier) == pytest.approx(0.27e6, rel=0.05)


def test_wrn34_10_parameter_count():
    network = build("wrn34_10", 10).network
    assert _param_count(network) == pytest.approx(46.16e6, rel=0.005)
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert {m.out_channels for m in convs} == {16, 160, 320, 640}
    assert network.fc.out_features == 10


def test_normalization_buffers_are_not_in_the_weights():
    # Weight files hold `classifier.network`'s state dict; the constants live in the code.
    classifier = build("resnet20", 10)
    assert "mean" not in classifier.state_dict() and "std" not in classifier.state_dict()


def test_timm_model_builds_with_its_normalization_inside():
    from timm.models import get_pretrained_cfg

    classifier = build("timm:resnet18", 10).eval()
    config = classifier.network.pretrained_cfg
    assert classifier.normalized
    assert classifier.mean.flatten().tolist() == pytest.approx(list(config["mean"]))
    assert classifier.std.flatten().tolist() == pytest.approx(list(config["std"]))
    assert classifier(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    gray = build("timm:resnet18", 10, in_channels=1)   # e.g. on Fashion-MNIST: one normalization channel
    assert gray.mean.flatten().tolist() == pytest.approx([sum(config["mean"]) / 3])
    assert gray(torch.rand(2, 1, 32, 32)).shape == (2, 10)

    # A model whose pretrained config is not the ImageNet default: the constants follow the config.
    test_model = build("timm:test_resnet.r160_in1k", 7)
    assert get_pretrained_cfg("test_resnet.r160_in1k").mean == (0.5, 0.5, 0.5)
    assert test_model.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert test_model.std.flatten().tolist() == [0.5, 0.5, 0.5]

    # The normalization is applied before the network: forward(x) == network((x - mean) / std).
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.network((x - classifier.mean) / classifier.std)
        torch.testing.assert_close(classifier(x), expected)


def test_mnist_a_layers():
    net = build("mnist_a", 10).network
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 64, (5, 5), (1, 1), (0, 0)), (64, 64, (5, 5), (1, 1), (0, 0))]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(25600, 128), (128, 10)]
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert net[:4](torch.zeros(1, 1, 28, 28)).shape == (1, 64, 20, 20)


def test_mnist_b_layers():
    net = build("mnist_b", 10).network
    assert isinstance(net[0], nn.Dropout) and net[0].p == 0.2   # dropout on the input
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (64, (8, 8), (2, 2)), (128, (6, 6), (2, 2)), (128, (5, 5), (1, 1))]
    x = torch.zeros(1, 1, 28, 28)
    sizes = []
    for module in net:
        x = module(x)
        if isinstance(module, nn.Conv2d):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(64, 14, 14), (128, 5, 5), (128, 1, 1)]   # Keras 'same', then 'valid'
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 10)]
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.2, 0.5]


def test_mnist_c_layers():
    net = build("mnist_c", 10).network
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 128, (3, 3), (0, 0)), (128, 64, (3, 3), (0, 0))]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(36864, 128), (128, 10)]
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.25, 0.5]


def test_mnist_d_layers():
    torch.manual_seed(0)
    net = build("mnist_d", 10).network
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 300), (300, 300), (300, 300), (300, 300), (300, 10)]
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.5] * 4
    assert sum(isinstance(m, nn.ReLU) for m in net) == 4
    # he_normal: std sqrt(2 / fan_in) (PyTorch's default init would give 1 / sqrt(3 fan_in)).
    assert float(linears[0].weight.detach().std()) == pytest.approx(math.sqrt(2 / 784), rel=0.05)
    assert float(linears[1].weight.detach().std()) == pytest.approx(math.sqrt(2 / 300), rel=0.05)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ArchitectureError) as info:
        build("mnist_e", 10)
    message = str(info.value)
    assert "'mnist_e'" in message
    for name in ("mnist_a", "mnist_b", "mnist_c", "mnist_d", "resnet20", "wrn34_10", "timm:"):
        assert name in message
    assert set(registry_names()) >= {"mnist_a", "resnet20", "wrn34_10"}


@pytest.mark.parametrize("name", ["timm:nope", "timm:resnet18.no_such_tag", "timm:"])
def test_unknown_timm_model(name):
    with pytest.raises(ArchitectureError) as info:
        build(name, 10)
    message = str(info.value)
    if name == "timm:":
        assert "timm:<any timm model name>" in message and "mnist_a" in message
    else:
        assert repr(name.removeprefix("timm:")) in message
        assert "timm.list_models" in message   # how to list the valid names


@pytest.mark.parametrize(("name", "message"), [
    ("pni:timm:local-dir:/some/dir", "architecture 'pni:timm:local-dir:/some/dir': timm:<name> takes a timm "
                                     "registry name only"),
    ("cni:timm:hf-hub:evil/model", "architecture 'cni:timm:hf-hub:evil/model': timm:<name> takes a timm "
                                   "registry name only"),
    ("pni:pni:mnist_a", "architecture 'pni:pni:mnist_a': weight noise wraps an architecture once"),
    ("pni:" * 1500 + "mnist_a", "architecture 'pni:pni:pni:pni:pni:pni:pni:pni:pni:pni:'... (6,007 characters) "
                                "is longer than 200 characters"),
])
def test_prefixes_compose_once_and_never_reach_timm_sources(monkeypatch, name, message):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm was asked to build"))
    with pytest.raises(ArchitectureError) as info:
        build(name, 10)
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------- weights


def _save(network: nn.Module, path, *, half: bool = False):
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
             for k, v in network.state_dict().items()}
    save_file(state, str(path))
    return path


@pytest.fixture
def mnist_d_weights(tmp_path):
    torch.manual_seed(1)
    network = build("mnist_d", 10).network
    return network, _save(network, tmp_path / "d.safetensors")


def test_load_round_trip_with_correct_sha256(mnist_d_weights):
    network, path = mnist_d_weights
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == digest
    defense = load("mnist_d", path, num_classes=10, sha256=digest.upper(), name="D")
    assert isinstance(defense, Defense) and defense.name == "D"
    for key, value in network.state_dict().items():
        torch.testing.assert_close(defense.model.network.state_dict()[key], value, rtol=0, atol=0)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(defense(x), network.eval()(x))


def test_load_without_weights_is_random_init():
    defense = load("mnist_d", None, num_classes=10)
    assert defense(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load("mnist_d", tmp_path / "absent.safetensors", num_classes=10)


@pytest.mark.parametrize("content", [b"", b"abc", b"not a safetensors file\n" * 40])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load("mnist_d", path, num_classes=10)
    assert "not a safetensors file" in str(info.value)
    assert "save_file" in str(info.value)   # tells how to convert


class _Payload:
    """Unpickling this creates `marker`: what a malicious checkpoint could do instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.pt"
    torch.save({"state_dict": _Payload(str(marker))}, weights)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(weights.read_bytes())
    assert not marker.exists()

    for path in (weights, disguised):
        with pytest.raises(WeightsError, match="never loads pickled weights"):
            load("mnist_d", path, num_classes=10, sha256=file_sha256(path))
        with pytest.raises(WeightsError):
            read_safetensors(path)
        assert not marker.exists()

    # The payload is live: an unsafe loader would have run it (so the check above is meaningful).
    loaded = torch.load(weights, weights_only=False)
    loaded["state_dict"].close()   # what the payload returned: the file it created
    assert marker.exists()


def test_wrong_sha256_states_both_hashes(mnist_d_weights):
    _, path = mnist_d_weights
    actual = file_sha256(path)
    wrong = "0" * 64
    with pytest.raises(WeightsError) as info:
        load("mnist_d", path, num_classes=10, sha256=wrong)
    message = str(info.value)
    assert actual in message and wrong in message


def test_sha256_is_checked_before_parsing(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="sha256 is"):
        read_safetensors(path, sha256="f" * 64)


def test_weights_of_another_architecture(tmp_path):
    path = _save(build("mnist_b", 10).network, tmp_path / "b.safetensors")
    with pytest.raises(WeightsError) as info:
        load("mnist_a", path, num_classes=10)
    message = str(info.value)
    assert "do not fit" in message
    assert "missing" in message or "unexpected" in message or "shape" in message


def test_weights_with_other_number_of_classes(tmp_path):
    path = _save(build("mnist_d", 10).network, tmp_path / "d10.safetensors")
    with pytest.raises(WeightsError) as info:
        load("mnist_d", path, num_classes=100, name="D")
    message = str(info.value)
    assert "of another shape" in message
    assert "file (10,) vs model (100,)" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = build("mnist_d", 10).network.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["1.bias"]
    path = tmp_path / "edited.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError) as info:
        load("mnist_d", path, num_classes=10)
    message = str(info.value)
    assert "1 missing (e.g. 1.bias)" in message
    assert "1 unexpected (e.g. extra.weight)" in message


def test_fp16_weights_load_into_float32(tmp_path):
    torch.manual_seed(2)
    network = build("mnist_d", 10).network
    path = _save(network, tmp_path / "half.safetensors", half=True)
    assert all(t.dtype == torch.float16 for t in read_safetensors(path).values())
    defense = load("mnist_d", path, num_classes=10)
    loaded = defense.model.network.state_dict()
    for key, value in network.state_dict().items():
        assert loaded[key].dtype == torch.float32
        torch.testing.assert_close(loaded[key], value, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(loaded[key], value.half().float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool, torch.float8_e4m3fn,
                                   torch.float64])
def test_weights_of_another_dtype_are_refused_not_cast(tmp_path, dtype):
    state = {k: v.to(dtype).contiguous() for k, v in build("mnist_d", 10).network.state_dict().items()}
    path = tmp_path / "cast.safetensors"
    save_file(state, str(path))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(WeightsError) as info:
        load("mnist_d", path, num_classes=10)
    assert str(info.value) == (
        f"{path}: 10 tensor(s) stored as {name} (e.g. '1.bias' is {name}); weights must be float16, bfloat16 "
        "or float32. Convert with {k: v.float() for k, v in state_dict.items()} before save_file")


def test_bfloat16_weights_and_integer_buffers_load(tmp_path):
    network = build("resnet20", 10).network   # BatchNorm: an int64 num_batches_tracked per layer
    state = {k: (v.bfloat16() if v.is_floating_point() else v).contiguous() for k, v in network.state_dict().items()}
    assert any(v.dtype == torch.int64 for v in state.values())
    save_file(state, str(tmp_path / "bf16.safetensors"))
    defense = load("resnet20", tmp_path / "bf16.safetensors", num_classes=10)
    assert defense.model.network.conv1.weight.dtype == torch.float32


def _with_repeated_header_key(source, target, key: str):
    """`source` with a second header entry for `key` (same offsets), as a hand-made file could have."""
    raw = source.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + size].decode().rstrip()
    entry = json.dumps(json.loads(header)[key])
    repeated = (header[:-1] + f',"{key}":{entry}}}').encode()
    repeated += b" " * (-len(repeated) % 8)
    target.write_bytes(len(repeated).to_bytes(8, "little") + repeated + raw[8 + size:])
    return target


def test_a_safetensors_header_that_names_a_tensor_twice_is_refused(mnist_d_weights, tmp_path):
    _, path = mnist_d_weights
    doubled = _with_repeated_header_key(path, tmp_path / "doubled.safetensors", "1.bias")
    from safetensors import safe_open

    with safe_open(str(doubled), framework="pt") as handle:   # the parser alone keeps one silently
        assert "1.bias" in handle.keys()
    with pytest.raises(WeightsError) as info:
        read_safetensors(doubled)
    assert str(info.value) == (f"{doubled}: the safetensors header names '1.bias' twice; a file holds each "
                               "tensor once (save it again with safetensors' save_file)")


def test_weights_error_is_a_user_error():
    assert issubclass(WeightsError, ThreatbenchError)


# ---------------------------------------------------------------- the Defense interface


def test_parameters_frozen_and_grads_cleared():
    model = small_mlp()
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    defense = Defense(model, 10)
    assert all(not p.requires_grad for p in defense.parameters())
    assert all(p.grad is None for p in defense.parameters())
    # Gradients w.r.t. the input still flow (what white-box attacks need).
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    (grad,) = torch.autograd.grad(defense(x).sum(), x)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in defense.parameters())


def test_train_keeps_eval_mode():
    torch.manual_seed(0)
    defense = Defense(build("mnist_a", 10), 10)
    assert defense.train() is defense
    assert not defense.training
    assert not any(m.training for m in defense.modules())
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(defense(x), defense(x), rtol=0, atol=0)   # dropout is off
    assert torch.equal(defense.predict(x), defense.predict(x))
    # Sanity: the same network in train mode is stochastic, so the check above can fail.
    network = defense.model.network
    network.train()
    with torch.no_grad():
        assert not torch.equal(network(x), network(x))


def test_predict_is_argmax_and_scores_are_probabilities():
    defense = Defense(small_mlp(), 10)
    x = torch.rand(16, 1, 28, 28)
    logits = defense(x)
    assert torch.equal(defense.predict(x), logits.argmax(dim=1))
    scores = defense.scores(x)
    assert scores.shape == (16, 10)
    assert (scores >= 0).all()
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(16))
    torch.testing.assert_close(scores, torch.softmax(logits, dim=1))


def test_wrong_output_shape():
    defense = Defense(small_mlp(), 5, name="mlp")
    with pytest.raises(DefenseOutputError) as info:
        defense(torch.rand(4, 1, 28, 28))
    message = str(info.value)
    assert "(4, 10)" in message and "expected (4, 5)" in message and "mlp" in message


def test_one_dimensional_output():
    defense = Defense(nn.Sequential(small_mlp(), nn.Flatten(0)), 10)
    with pytest.raises(DefenseOutputError, match=r"expected \(3, 10\)"):
        defense.predict(torch.rand(3, 1, 28, 28))


class _Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 10), self.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_output(value):
    defense = Defense(_Constant(value), 10, name="broken")
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(DefenseOutputError, match="NaN or inf"):
        defense.predict(x)
    with pytest.raises(DefenseOutputError, match="NaN or inf"):
        defense.scores(x)


class _TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_mlp()

    def forward(self, x):
        logits = self.net(x)
        return logits, logits.detach()


def test_tuple_output_is_a_clear_error():
    defense = Defense(_TupleModel(), 10, name="tuple")
    x = torch.rand(2, 1, 28, 28)
    for call in (defense, defense.predict, defense.scores):
        with pytest.raises(DefenseOutputError) as info:
            call(x)
        message = str(info.value)
        assert "tuple" in message and "(2, 10)" in message


def test_probe_randomness():
    x = torch.rand(8, 1, 28, 28)
    assert probe_randomness(Defense(NoisyModel(small_mlp()), 10), x) is True
    assert probe_randomness(Defense(small_mlp(), 10), x) is False
    # Dropout is switched off by the wrapper, so a model with dropout is deterministic.
    assert probe_randomness(Defense(build("mnist_b", 10), 10), x) is False


def test_log_scores_do_not_saturate_when_logits_are_scaled():
    """float32 log(softmax(1e4 z)) is -inf or the floor for every class but the top; log-softmax is not."""

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x = torch.rand(3, 1, 4, 4)
    plain = Defense(model, 5)

    class Scaled(nn.Module):
        def forward(self, inputs):
            return 1e4 * model(inputs)

    scaled = Defense(Scaled(), 5)
    log_p = scaled.log_scores(x)
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p, torch.log_softmax(1e4 * model(x).double(), dim=1), rtol=1e-6)
    assert torch.equal(log_p.argsort(dim=1), plain.log_scores(x).argsort(dim=1)), "the same ranking of classes"


def test_log_scores_average_probabilities_over_draws():
    from benchmark.models.defense import mean_log_probability

    outputs = iter([torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])])

    class TwoDraws(nn.Module):
        def forward(self, inputs):
            return next(outputs)

    log_p = Defense(TwoDraws(), 2).log_scores(torch.zeros(1, 1, 1, 1), draws=2)
    assert torch.allclose(log_p.exp(), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    stacked = torch.log(torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]], dtype=torch.float64))
    assert torch.allclose(mean_log_probability(stacked).exp(), torch.tensor([[0.4, 0.6]], dtype=torch.float64))
