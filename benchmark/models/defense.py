"""The defense interface every entry is judged through.

A defense takes float32 NCHW images in [0, 1] (normalization lives inside the model) and exposes:

- `forward(x) -> logits`: the differentiable path white-box attacks use (one random draw per call
  for a randomized defense);
- `predict(x) -> labels`: the decision the defense actually makes; every accuracy is measured on it;
- `scores(x) -> probabilities`: what the defense reports (a softmax, or a smoothed entry's votes);
- `log_scores(x, draws) -> log-probabilities`: what a score-based attacker observes. Computed from
  the logits with log-softmax, so it never saturates the way log(softmax) does in float32 (a model
  whose logits are scaled by 1e4 would otherwise show the attacker a flat landscape). With
  `draws` > 1 it is the log of the mean probability over that many random draws (docs/threat-model.md);
- `randomized`: declared randomness. `probe_randomness` checks it independently.

Models run in eval mode with frozen parameters, so attacks can only differentiate w.r.t. the input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from benchmark.errors import DefenseOutputError, WeightsError
from benchmark.models.architectures import ImageClassifier, build
from benchmark.untrusted import excerpt

WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEADER_BYTES = 100_000_000   # the safetensors format's own limit on its JSON header


class Defense(nn.Module):
    """Wraps any `nn.Module` that maps [0, 1] images to logits."""

    def __init__(self, model: nn.Module, num_classes: int, *, randomized: bool = False,
                 name: str = "defense"):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.randomized = randomized
        self.name = name
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None
        super().train(False)

    def train(self, mode: bool = True) -> Defense:
        # A judged model never leaves eval mode: dropout and batch statistics would change its answers.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor):   # e.g. (logits, features): fail clearly, not AttributeError
            raise DefenseOutputError(
                f"{self.name}: the model returned a {type(logits).__name__}, not a tensor; a defense "
                f"must return one ({x.shape[0]}, {self.num_classes}) tensor of logits (wrap the "
                "model so that forward returns only the logits)"
            )
        if logits.ndim != 2 or logits.shape != (x.shape[0], self.num_classes):
            raise DefenseOutputError(
                f"{self.name}: the model returned shape {tuple(logits.shape)} for a batch of "
                f"{x.shape[0]}; expected ({x.shape[0]}, {self.num_classes}) logits "
                "(check num_classes and that the model returns a single tensor)"
            )
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return require_finite(self.forward(x), self.name).argmax(dim=1)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(require_finite(self.forward(x), self.name), dim=1)

    @torch.no_grad()
    def log_scores(self, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """log of the mean softmax over `draws` forward passes, computed stably from the logits."""
        logs = [torch.log_softmax(require_finite(self.forward(x), self.name).double(), dim=1)
                for _ in range(max(1, draws))]
        return mean_log_probability(torch.stack(logs))


def mean_log_probability(log_probabilities: torch.Tensor) -> torch.Tensor:
    """log(mean_k p_k) from log p_k stacked on dim 0, without leaving log space (float64)."""
    count = log_probabilities.shape[0]
    return torch.logsumexp(log_probabilities, dim=0) - math.log(count)


def require_finite(values: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(values).all():
        raise DefenseOutputError(
            f"{name}: the model's output contains NaN or inf; a defense must return finite logits "
            "for every input in [0, 1]"
        )
    return values


@torch.no_grad()
def probe_randomness(defense: Defense, x: torch.Tensor) -> bool:
    """True when two forward passes on the same batch disagree (an undeclared random defense)."""
    first, second = defense(x), defense(x)
    scale = 1.0 + float(first.abs().max())
    return bool((first - second).abs().max() > 1e-5 * scale)


# ---------------------------------------------------------------- weights


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: str | os.PathLike, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file, checking its sha256 first when one is given."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise WeightsError(
                f"{path}: sha256 is {actual}, expected {sha256.lower()}; the file is corrupted or "
                "not the one the entry names (download it again or fix the expected hash)"
            )
    _refuse_repeated_header_keys(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"{path}: not a safetensors file ({error}). threatbench never loads pickled weights "
            "(.pt/.pth/.bin); convert yours with safetensors.torch.save_file(model.state_dict(), "
            "'weights.safetensors')"
        ) from None


class _RepeatedKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


def _refuse_repeated_header_keys(path: Path) -> None:
    """The safetensors parser keeps the last of two tensors of one name; refuse the file instead.
    A header that is not readable JSON is left to safe_open, which says so."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        if not 0 < size <= MAX_HEADER_BYTES:
            return
        header = handle.read(size)
    try:
        json.loads(header, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as repeated:
        raise WeightsError(f"{path}: the safetensors header names {excerpt(repeated.args[0])} twice; a "
                           "file holds each tensor once (save it again with safetensors' save_file)") from None
    except (ValueError, RecursionError):
        return


def _refuse_other_dtypes(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Weights only as float16, bfloat16 or float32: anything else (int8, float8, float64, bool...)
    would be cast silently into numbers nobody trained. An integer buffer of the model (BatchNorm's
    num_batches_tracked, unused in eval mode) may also keep its own dtype."""
    wrong = sorted((key, state[key].dtype) for key in state if state[key].dtype not in WEIGHT_DTYPES
                   and (expected[key].is_floating_point() or state[key].dtype != expected[key].dtype))
    if wrong:
        key, dtype = wrong[0]
        kinds = sorted({str(d).removeprefix("torch.") for _, d in wrong})
        raise WeightsError(
            f"{source}: {len(wrong)} tensor(s) stored as {', '.join(kinds)} (e.g. {excerpt(key)} is "
            f"{str(dtype).removeprefix('torch.')}); weights must be float16, bfloat16 or float32. Convert "
            "with {k: v.float() for k, v in state_dict.items()} before save_file"
        )


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` strictly into `model`, casting fp16/bf16 storage to the model's dtype."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            details.append(f"{len(mismatched)} of another shape (e.g. {mismatched[0]})")
        raise WeightsError(
            f"{source}: the weights do not fit this architecture: {'; '.join(details)}. "
            "Check --arch and the dataset's number of classes"
        )
    _refuse_other_dtypes(expected, state, source)
    cast = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(cast, strict=True)


def load(arch: str, weights: str | os.PathLike | None, *, num_classes: int, sha256: str | None = None,
         randomized: bool = False, in_channels: int | None = None, device: str | torch.device = "cpu",
         name: str | None = None, normalization: dict[str, Sequence[float]] | None = None) -> Defense:
    """Build `arch`, load its safetensors `weights` (sha256-checked when given), wrap as a Defense.

    `normalization` ({"mean": [...], "std": [...]}) replaces the architecture's own input
    normalization, e.g. a submission's preprocessing.
    """
    classifier = build(arch, num_classes, in_channels=in_channels)
    if normalization is not None:
        classifier = ImageClassifier(classifier.network, normalization["mean"], normalization["std"])
    if weights is not None:
        load_state(classifier.network, read_safetensors(weights, sha256=sha256), str(weights))
    defense = Defense(classifier, num_classes, randomized=randomized, name=name or arch)
    return defense.to(device)
