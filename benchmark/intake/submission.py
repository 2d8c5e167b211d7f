"""A Hub submission as the judge sees it: its defense, its record entry, its CPU smoke check.

The defense is built only from the registry (or the timm architecture a config.json names) and the
manifest's safetensors weights: nothing from the submission is imported, executed or unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.data import DataError, load_evaluation_set
from benchmark.errors import ArchitectureError
from benchmark.evaluation.checks.output import check_defense_output
from benchmark.evaluation.entry import EntryInfo
from benchmark.evaluation.stats import wilson_interval
from benchmark.intake.hub import FetchedFiles
from benchmark.intake.manifest import Manifest, ManifestError
from benchmark.models.architectures import TIMM_PREFIX, check_architecture
from benchmark.models.defense import Defense
from benchmark.models.entries import judged_defense
from benchmark.spec import DatasetSpec
from benchmark.untrusted import excerpt


@dataclass(frozen=True)
class ResolvedModel:
    """What the judge builds: a registry architecture and the input normalization, if any."""

    architecture: str
    normalization: dict[str, list[float]] | None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a repeated key is refused (json.loads would silently keep the last)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {excerpt(key)} appears twice in one object; give each key once")
        seen.add(key)
    return dict(pairs)


def _not_a_number(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number; give finite numbers")


def _config_document(path: Path, where: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys,
                              parse_constant=_not_a_number)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ManifestError(f"{where}: config.json is not valid JSON: {str(error)[:120]}") from None
    except ValueError as error:
        raise ManifestError(f"{where}: config.json: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("architecture"), str):
        raise ManifestError(f"{where}: config.json has no \"architecture\" (a timm model name), as "
                            "timm's save_for_hf writes it")
    return document


def _config_field(document: dict[str, Any], key: str, where: str, kind: type, what: str) -> Any:
    """document[key] (dotted into pretrained_cfg) when present, of `kind`; else None."""
    table = document
    *parents, last = key.split(".")
    for parent in parents:
        table = table.get(parent) or {}
    value = table.get(last)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ManifestError(f"{where}: config.json {key} must be {what}, got {excerpt(value)}")
    return value


def resolve_config(path: Path, dataset: DatasetSpec, where: str) -> ResolvedModel:
    """The timm architecture and normalization a timm config.json declares, checked against the spec."""
    document = _config_document(path, where)
    name = document["architecture"]
    try:
        check_architecture(f"{TIMM_PREFIX}{name}")
    except ArchitectureError:
        raise ManifestError(f"{where}: config.json names architecture {excerpt(name)}, which timm does not "
                            "have; only timm architectures (by registry name) can come from a "
                            "config.json") from None
    pretrained = _config_field(document, "pretrained_cfg", where, dict, "an object (as timm's save_for_hf "
                               "writes it)") or {}
    classes = _config_field(document, "num_classes", where, int, "an integer")
    if classes is None:
        classes = _config_field(document, "pretrained_cfg.num_classes", where, int, "an integer")
    if classes is not None and classes != dataset.num_classes:
        raise ManifestError(f"{where}: config.json says num_classes {classes}, {dataset.name} has "
                            f"{dataset.num_classes}; the model's output must have one logit per class")
    size = _config_field(document, "pretrained_cfg.input_size", where, list, "a list [channels, height, width]")
    if size is not None and size != list(dataset.input_shape):
        raise ManifestError(f"{where}: config.json's input_size {excerpt(size)} differs from the spec's "
                            f"{list(dataset.input_shape)} for {dataset.name}; every entry is judged on "
                            "the spec's fixed preprocessing")
    normalization = None
    if "mean" in pretrained or "std" in pretrained:
        normalization = {key: _channel_values(pretrained.get(key), key, dataset.input_shape[0], where)
                         for key in ("mean", "std")}
    return ResolvedModel(f"{TIMM_PREFIX}{name}", normalization)


def _channel_values(values: Any, key: str, channels: int, where: str) -> list[float]:
    low = 1e-6 if key == "std" else -10.0   # the bounds of a manifest's preprocessing
    if (not isinstance(values, list) or len(values) != channels
            or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                   or not low <= v <= 10.0 for v in values)):
        raise ManifestError(f"{where}: config.json pretrained_cfg.{key} must be {channels} number(s), one per "
                            f"input channel, finite and in [{low:g}, 10]; got {excerpt(values)}")
    return [float(v) for v in values]


def resolve_model(manifest: Manifest, files: FetchedFiles, dataset: DatasetSpec) -> ResolvedModel:
    model = manifest.model
    if model.from_config:
        return resolve_config(files.config, dataset, f"{manifest.path.name} ({model.repo})")
    normalization = None if model.preprocessing is None else dataclasses.asdict(model.preprocessing)
    if normalization is not None:
        normalization = {k: list(v) for k, v in normalization.items()}
    return ResolvedModel(model.architecture, normalization)


def submission_defense(manifest: Manifest, files: FetchedFiles, dataset: DatasetSpec,
                       device: str | torch.device = "cpu") -> tuple[Defense, EntryInfo]:
    """The submission's defense (weights sha256-checked again on load) and its record entry."""
    model = manifest.model
    resolved = resolve_model(manifest, files, dataset)
    smoothing = None if model.smoothing is None else dataclasses.asdict(model.smoothing)
    defense = judged_defense(resolved.architecture, files.weights, sha256=model.sha256,
                             num_classes=dataset.num_classes, in_channels=dataset.input_shape[0],
                             name=manifest.name, randomized=model.randomized,
                             normalization=resolved.normalization, smoothing=smoothing, device=device)
    weights = {"repo": model.repo, "revision": model.revision, "file": model.weights, "sha256": model.sha256}
    if model.from_config:
        weights["config_sha256"] = model.config_sha256
    entry = EntryInfo(
        name=manifest.name, kind="submission", architecture=resolved.architecture, weights=weights,
        paper=manifest.paper, smoothing=smoothing, normalization=resolved.normalization,
        submission={**manifest.summary(), "authors": list(manifest.authors), "license": manifest.license,
                    "claimed": manifest.claimed or None},
    )
    return defense, entry


@dataclass(frozen=True)
class SmokeReport:
    n: int
    correct: int | None               # None: the dataset is not on this machine
    interval: tuple[float, float] | None
    missing_data: str | None

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else self.correct / self.n


@torch.no_grad()
def smoke_check(defense: Defense, dataset: DatasetSpec, *, n: int = 200, data_dir: str | Path | None = None,
                confidence: float = 0.95, device: str | torch.device = "cpu") -> SmokeReport:
    """Load check, output shape and finiteness, and clean accuracy on the first n examples.

    Without the dataset (e.g. ImageNet on a CI runner) the interface is checked on random images of
    the spec's input shape, and the report names the missing data instead of an accuracy.
    """
    preprocessing = dataset.preprocessing.as_dict() if dataset.preprocessing else None
    try:
        eval_set = load_evaluation_set(dataset.name, n, data_dir, imagenet_preprocessing=preprocessing)
    except DataError as error:
        x = torch.rand((4, *dataset.input_shape), generator=torch.Generator().manual_seed(0)).to(device)
        check_defense_output(defense, x, dataset.num_classes)
        return SmokeReport(n=0, correct=None, interval=None, missing_data=str(error))
    images = torch.stack([eval_set[i][0] for i in range(len(eval_set))]).to(device)
    labels = eval_set.labels[: len(eval_set)].to(device)
    check_defense_output(defense, images[:64], dataset.num_classes)
    correct = sum(int((defense.predict(images[i:i + 100]) == labels[i:i + 100]).sum())
                  for i in range(0, len(images), 100))
    return SmokeReport(n=len(images), correct=correct,
                       interval=wilson_interval(correct, len(images), confidence), missing_data=None)
