"""The architecture registry: a decorator names a builder; build and list read the same table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.errors import ArchitectureError
from benchmark.models import registry
from benchmark.models.architectures import build, registry_names


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_the_built_in_networks_are_registered_with_their_papers():
    known = registry.registered()
    assert list(known)[:6] == ["mnist_a", "mnist_b", "mnist_c", "mnist_d", "resnet20", "wrn34_10"]
    assert "Table 6" in known["mnist_a"].paper and known["resnet20"].mean is not None


def test_a_registered_builder_is_buildable_listed_and_wrapped_in_noise(scratch_registry):
    @registry.register_architecture("tiny_test_net", in_channels=1, paper="this test", description="one layer")
    def tiny(num_classes: int, in_channels: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4 * 4, num_classes))

    assert "tiny_test_net" in registry_names()
    assert build("tiny_test_net", 3)(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    assert build("pni:tiny_test_net", 3)(torch.rand(2, 1, 4, 4)).shape == (2, 3)


def test_a_name_registers_once(scratch_registry):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_architecture("mnist_a", in_channels=1, paper="", description="")(lambda n, c: nn.Identity())


def test_an_unknown_name_lists_the_registry():
    with pytest.raises(ArchitectureError, match="mnist_a"):
        build("no_such_net", 10)
