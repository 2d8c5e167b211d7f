"""Standard (non-adversarial) training for the judge's own models: the quick-start model A and,
later, the held-out transfer sources. Baseline defenses live in `baselines/` and may reuse this.

Seeded and resumable: the data order and dropout of epoch e depend only on (seed, e), and a
checkpoint (weights + Adam state, safetensors only) is written after every epoch, so an interrupted
run continues to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from benchmark.data import load_training_tensors
from benchmark.models.architectures import build
from benchmark.models.defense import file_sha256
from benchmark.runtime.files import atomic_write_json
from benchmark.runtime.randomness import derive_seed

CPU_TRAINING_THREADS = 2   # the count the zoo's rebuilt entries (C) were trained with


@contextmanager
def fixed_cpu_threads(device: str | torch.device = "cpu") -> Iterator[None]:
    """Train on a CPU with CPU_TRAINING_THREADS intra-op threads, whatever the machine or pytest set.

    CPU convolution and matmul kernels split their sums by thread, so the same recipe gives other
    bits at another thread count (C rebuilt with 1 thread missed its pinned sha256). A fixed count
    keeps a recipe's weights bit-identical across machines of one CPU type. GPUs are unaffected.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(CPU_TRAINING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class StandardRecipe:
    """Tramer et al.'s MNIST training: Adam 1e-3, batch 64, 6 epochs, no augmentation."""

    dataset: str = "fashion-mnist"
    architecture: str = "mnist_a"
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    max_steps: int | None = None        # stop early (tests); None trains every epoch fully
    train_limit: int | None = None      # use only the first examples of the train split (tests)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def name(self) -> str:
        return f"{self.architecture}-standard-seed{self.seed}-{self.sha256()[:12]}"


@dataclass(frozen=True)
class TrainedModel:
    weights: Path
    sha256: str
    recipe: StandardRecipe


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).clone()
    return tensors


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(path: Path, network: torch.nn.Module, optimizer, epoch: int,
                    seconds: float = 0.0) -> None:
    """Model and optimizer after `epoch`, with the training wall time spent so far (all sessions)."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in network.state_dict().items()}
    tensors.update(_optimizer_tensors(optimizer))
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata={"epoch": str(epoch), "seconds": f"{seconds:.1f}"})
    os.replace(temporary, path)


def load_checkpoint(path: Path, network: torch.nn.Module, optimizer) -> int:
    tensors = load_file(str(path))
    network.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    _restore_optimizer(optimizer, tensors)
    return int(_checkpoint_metadata(path)["epoch"])


def checkpoint_seconds(path: Path) -> float:
    """Training wall time already spent before the checkpoint (0 for none, or an older checkpoint)."""
    return float(_checkpoint_metadata(path).get("seconds", 0.0)) if path.is_file() else 0.0


def _checkpoint_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def cpu_kernels() -> str:
    """The vector instruction set PyTorch's CPU kernels dispatch to here (e.g. AVX2, AVX512). Reduction
    order, and so the last bits of trained weights, depend on it: a recipe rebuilds its pinned sha256
    only with the kernels it was trained with (measured: D's recipe on an AVX2-only CPU)."""
    return torch.backends.cpu.get_cpu_capability()


def training_device(device: str | torch.device = "cpu") -> str:
    """What trained a model, for its card: the GPU's name, or the CPU with its kernels and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()} ({cpu_kernels()} kernels), " \
           f"{torch.get_num_threads()} threads"


def run_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
              y: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
              seed: int, epoch: int, epochs: int, batch_size: int, steps_done: int,
              max_steps: int | None = None, clip_grad_norm: float = 0.0, progress: bool = True,
              device: str | torch.device = "cpu") -> int:
    """One pass over (x, y) in the order of (seed, epoch); returns the number of steps done so far.

    Dropout (and any model noise) draws from torch's global generator, seeded here per epoch, so a
    run resumed from an epoch checkpoint continues exactly as an uninterrupted one.
    """
    model.train()
    torch.manual_seed(derive_seed(seed, "dropout", epoch))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
        derive_seed(seed, "order", epoch)))
    batches = range(0, len(x), batch_size)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress,
               leave=False)
    for start in bar:
        if max_steps is not None and steps_done >= max_steps:
            break
        index = order[start:start + batch_size]
        loss = loss_fn(x[index].to(device), y[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        steps_done += 1
        if steps_done % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return steps_done


def train_epoch(network, optimizer, x, y, recipe: StandardRecipe, epoch: int, steps_done: int,
                progress: bool) -> int:
    return run_epoch(network, optimizer, x, y, lambda xb, yb: F.cross_entropy(network(xb), yb),
                     seed=recipe.seed, epoch=epoch, epochs=recipe.epochs,
                     batch_size=recipe.batch_size, steps_done=steps_done,
                     max_steps=recipe.max_steps, progress=progress)


def train_standard(recipe: StandardRecipe, out_dir: Path, *, data_dir=None, progress: bool = True,
                   ) -> TrainedModel:
    """Train per `recipe` into `out_dir` (weights.safetensors + model.json); resume if interrupted."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, card = out_dir / "weights.safetensors", out_dir / "model.json"
    if weights.is_file() and card.is_file():
        return TrainedModel(weights, json.loads(card.read_text())["sha256"], recipe)

    x, y = load_training_tensors(recipe.dataset, data_dir, limit=recipe.train_limit)
    torch.manual_seed(recipe.seed)
    network = build(recipe.architecture, int(y.max()) + 1, in_channels=x.shape[1]).network
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe.learning_rate)
    checkpoint = out_dir / "checkpoint.safetensors"
    first_epoch = load_checkpoint(checkpoint, network, optimizer) if checkpoint.is_file() else 0
    steps_per_epoch = -(-len(x) // recipe.batch_size)
    steps_done = first_epoch * steps_per_epoch
    spent, started = checkpoint_seconds(checkpoint), time.perf_counter()
    with fixed_cpu_threads():
        device = training_device()
        for epoch in range(first_epoch, recipe.epochs):
            steps_done = train_epoch(network, optimizer, x, y, recipe, epoch, steps_done, progress)
            save_checkpoint(checkpoint, network, optimizer, epoch + 1,
                            spent + time.perf_counter() - started)
            if recipe.max_steps is not None and steps_done >= recipe.max_steps:
                break

    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(weights), metadata={"recipe_sha256": recipe.sha256()})
    sha256 = file_sha256(weights)
    training = {"seconds": round(spent + time.perf_counter() - started, 1), "device": device,
                "train_images": len(x)}
    atomic_write_json(card, _model_card(recipe, sha256, steps_done, training))
    checkpoint.unlink(missing_ok=True)
    return TrainedModel(weights, sha256, recipe)


def standard_model_dir(recipe: StandardRecipe) -> Path:
    """Where the cache keeps a standard recipe's model (the quick-start model, static models)."""
    from benchmark.runtime.cache import cache_dir

    return cache_dir() / "models" / recipe.dataset / recipe.name()


def _model_card(recipe: StandardRecipe, sha256: str, steps: int, training: dict[str, Any],
                ) -> dict[str, Any]:
    return {"architecture": recipe.architecture, "dataset": recipe.dataset, "sha256": sha256,
            "recipe": asdict(recipe), "recipe_sha256": recipe.sha256(), "steps": steps,
            "training": training}
