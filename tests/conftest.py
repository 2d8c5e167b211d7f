"""Shared fixtures: small real models on real Fashion-MNIST, trained in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.models.defense import Defense
from benchmark.runtime.cache import cache_dir

# The cache the regression replays (benchmark/tools/test_regression.py) read, taken before any test
# isolates its own: only the zoo rebuild test writes there, a file whose sha256 it has verified.
REPLAY_CACHE = cache_dir()
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_REASON = "Fashion-MNIST data not installed (apt-get install dataset-fashion-mnist)"


def fashion_installed() -> bool:
    return (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file()


requires_fashion = pytest.mark.skipif(not fashion_installed(), reason=FASHION_REASON)


def pytest_collection_modifyitems(config, items):
    # Start the long tests first (slow ones, then the regression replays), so that xdist's workers
    # share them instead of one finishing alone.
    def order(item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.nodeid.startswith("benchmark/") else 2

    items.sort(key=order)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never read or write the user's real cache or data roots from a test.
    monkeypatch.setenv("THREATBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("THREATBENCH_DATA", raising=False)


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="session")
def fashion_test_batch():
    if not fashion_installed():
        pytest.skip(FASHION_REASON)
    from benchmark.data import load_evaluation_set

    eval_set = load_evaluation_set("fashion-mnist", 128, download=False)
    x = torch.stack([eval_set[i][0] for i in range(len(eval_set))])
    return x, eval_set.labels.clone()


@pytest.fixture(scope="session")
def trained_mlp() -> nn.Module:
    """An MLP trained for 400 Adam steps on Fashion-MNIST (about 85% test accuracy)."""
    if not fashion_installed():
        pytest.skip(FASHION_REASON)
    from benchmark.data import load_training_tensors

    x, y = load_training_tensors("fashion-mnist", download=False, limit=25600)
    model = small_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        index = torch.randint(0, len(x), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def trained_defense(trained_mlp) -> Defense:
    return Defense(trained_mlp, 10, name="mlp")


class NoisyModel(nn.Module):
    """Adds fresh input noise on every call: a randomized defense."""

    def __init__(self, model: nn.Module, sigma: float = 0.1):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


def write_small_spec(path: Path, *, n: int, nattack_n: int, nattack_max_iterations: int) -> Path:
    """The packaged spec with a smaller Fashion-MNIST quick budget, as a file for `--spec`."""
    import re

    from benchmark.spec import DEFAULT_SPEC_PATH

    text = DEFAULT_SPEC_PATH.read_text()
    small, count = re.subn(r"(\[datasets\.fashion-mnist\.budgets\.quick\]\n)n = 500\nnattack_n = 50[^\n]*\n"
                           r"nattack_max_iterations = 50",
                           rf"\g<1>n = {n}\nnattack_n = {nattack_n}\nnattack_max_iterations = {nattack_max_iterations}",
                           text)
    assert count == 1, "the packaged spec's quick budget block changed; update write_small_spec"
    path.write_text(small)
    return path
