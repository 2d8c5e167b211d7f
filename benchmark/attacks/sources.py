"""The judge's held-out transfer sources: their recipes, and loading them hash-checked.

Held-out sources belong to the judge, not to the baselines: no entry may be trained with them
(the spec forbids naming a source's architecture as a static model, and the baselines' ensemble
trainer refuses them). Their weights are committed under benchmark/resources/sources/ and pinned by
sha256 in the spec.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark import paths
from benchmark.attacks.transfer import TransferSource
from benchmark.errors import ThreatbenchError
from benchmark.models.defense import load
from benchmark.models.training import StandardRecipe
from benchmark.runtime.cache import cache_dir
from benchmark.spec import DatasetSpec, HeldOutSource

SOURCES_DIR = paths.RESOURCES_DIR / "sources"

# Trained with another seed than any entry, so that a source is an independent model.
SOURCE_RECIPES: dict[tuple[str, str], StandardRecipe] = {
    ("fashion-mnist", "B"): StandardRecipe(dataset="fashion-mnist", architecture="mnist_b", seed=1),
    ("mnist", "B"): StandardRecipe(dataset="mnist", architecture="mnist_b", seed=1),
}


def transfer_cache_dir() -> Path:
    return cache_dir() / "transfer"


def source_recipe(dataset: str, name: str) -> StandardRecipe:
    if (dataset, name) not in SOURCE_RECIPES:
        known = ", ".join(f"{d}/{n}" for d, n in SOURCE_RECIPES)
        raise ThreatbenchError(f"no training recipe for held-out source {dataset}/{name}; known: {known}")
    return SOURCE_RECIPES[(dataset, name)]


def _unavailable_reason(dataset: DatasetSpec, source: HeldOutSource) -> str | None:
    if source.sha256 is None:
        where = f"Hub {source.hub.repo}@{source.hub.revision}" if source.hub else "no weights file"
        return (f"the spec names held-out source {source.name} ({source.architecture}, {where}) for "
                f"{dataset.name} but pins no sha256 for its weights yet")
    return None


def load_source(dataset: DatasetSpec, source: HeldOutSource, device: torch.device) -> TransferSource:
    path = SOURCES_DIR / source.weights
    if not path.is_file():
        raise ThreatbenchError(
            f"held-out source {dataset.name}/{source.name}: weights file {path} is missing; it is part "
            "of the threatbench package (reinstall it, or retrain it with `threatbench train-source "
            f"--dataset {dataset.name} --name {source.name}` and check the sha256 against the spec)"
        )
    defense = load(source.architecture, path, num_classes=dataset.num_classes, sha256=source.sha256,
                   in_channels=dataset.input_shape[0], device=device, name=f"source {source.name}")
    return TransferSource(source.name, defense, source.sha256)


def load_held_out_sources(dataset: DatasetSpec, device: torch.device) -> tuple[list[TransferSource], str]:
    """The dataset's usable sources, or ([], the reason the transfer family cannot run)."""
    if not dataset.held_out_sources:
        return [], f"the spec names no held-out sources for {dataset.name} yet"
    reasons = [r for r in (_unavailable_reason(dataset, s) for s in dataset.held_out_sources) if r]
    if reasons:
        return [], "; ".join(reasons)
    return [load_source(dataset, s, device) for s in dataset.held_out_sources], ""
