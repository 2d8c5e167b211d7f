"""The spec as frozen dataclasses: what `load_spec` returns and every evaluation reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ThreatbenchError


class SpecError(ThreatbenchError, ValueError):
    """The spec file is invalid; the message names the key."""


@dataclass(frozen=True)
class AttackParams:
    name: str
    label: str
    alpha: float | None = None
    steps: int | None = None
    step_size: float | None = None
    random_start: bool = False
    draws: int | None = None

    def at_eps(self, eps: float, spec_eps: float) -> AttackParams:
        """This attack at another eps: step size and RAND+FGSM's alpha in proportion, so every eps
        takes the same steps along the same path relative to its ball."""
        scale = eps / spec_eps
        return dataclasses.replace(
            self, step_size=None if self.step_size is None else self.step_size * scale,
            alpha=None if self.alpha is None else self.alpha * scale)

    def as_dict(self) -> dict[str, Any]:
        fields = ("label", "alpha", "steps", "step_size", "random_start", "draws")
        return {k: getattr(self, k) for k in fields if getattr(self, k) not in (None, False)}


@dataclass(frozen=True)
class NAttackParams:
    population: int
    sigma: float
    learning_rate: float
    max_iterations: int
    check_every: int
    search_shape: tuple[int, ...]
    # "pixel": x' = clip(x + eps tanh(2 z / sigma)), every pixel can reach +-eps (spec v2); "tanh": the paper's
    # search around arctanh(2x - 1), which cannot move saturated pixels (docs/threat-model.md).
    parameterization: str = "tanh"
    score_draws: int = 1    # draws a randomized (not smoothed) defense averages per query


@dataclass(frozen=True)
class HubFile:
    repo: str
    revision: str
    file: str


@dataclass(frozen=True)
class HeldOutSource:
    """A transfer source of the judge's. `weights` is relative to benchmark/resources/sources/."""

    name: str
    architecture: str
    weights: str | None = None
    sha256: str | None = None
    hub: HubFile | None = None


@dataclass(frozen=True)
class RandomizedPolicy:
    prediction_repeats: int
    # Spec v2: randomized entries run in these fixed batches whatever the device or --batch-size, so
    # that their noise draws (seeded per batch) and so their results never depend on the batch size.
    batch_size: int | None = None
    nattack_batch_size: int | None = None


@dataclass(frozen=True)
class Diagnostics:
    unbounded_pgd_eps: float
    unbounded_pgd_examples: int


@dataclass(frozen=True)
class AdaptivePolicy:
    """How the adaptive family is scheduled (docs/ranking.md, "The cascade"). Spec v1 has neither:
    NAttack ran on the first `nattack_n` examples, whatever the other families found."""

    cascade: bool = False          # attack only the survivors of clean, white-box and transfer
    subsample: str = "first"       # "first" nattack_n examples, or "uniform": seeded, uniformly random


@dataclass(frozen=True)
class Budget:
    name: str
    n: int
    nattack_n: int
    nattack_max_iterations: int | None = None
    ranked: bool = False           # records at this budget can be ranked (benchmark.board.ranking)
    # A smoothed entry pays its m forward passes on every query and every prediction, so a budget
    # may give it fewer examples; only the sample sizes differ, never what is measured.
    smoothed_n: int | None = None
    smoothed_nattack_n: int | None = None

    def for_entry(self, smoothed: bool) -> Budget:
        """The budget an entry gets: its smoothed sample sizes for a smoothed entry."""
        if not smoothed or self.smoothed_n is None:
            return self
        return dataclasses.replace(self, n=self.smoothed_n, nattack_n=self.smoothed_nattack_n,
                                   smoothed_n=None, smoothed_nattack_n=None)


@dataclass(frozen=True)
class Preprocessing:
    resize: int
    crop: int
    interpolation: str

    def as_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    eps: float
    architectures: tuple[str, ...]
    trained_architecture: str
    static_models: tuple[str, ...]
    held_out_sources: tuple[HeldOutSource, ...]
    attacks: dict[str, AttackParams]
    nattack: NAttackParams
    budgets: dict[str, Budget]
    preprocessing: Preprocessing | None = None

    def ranked_budgets(self) -> list[str]:
        return [name for name, budget in self.budgets.items() if budget.ranked]

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise SpecError(f"unknown budget {name!r}; choose one of: {', '.join(self.budgets)}")
        return self.budgets[name]


@dataclass(frozen=True)
class Spec:
    schema: str
    version: str
    norm: str
    seed: int
    confidence: float
    randomized: RandomizedPolicy
    diagnostics: Diagnostics
    datasets: dict[str, DatasetSpec]
    sha256: str
    path: Path = field(compare=False)
    adaptive: AdaptivePolicy = AdaptivePolicy()

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise SpecError(
                f"unknown dataset {name!r}; the spec v{self.version} defines: {', '.join(self.datasets)}"
            )
        return self.datasets[name]

    def with_budget(self, dataset: str, budget: Budget) -> Spec:
        """This spec with `budget` put in (or replacing the one of its name) for `dataset`: how a
        tool or test measures a smaller evaluation under the same attack parameters. The sha256 is
        kept, so a record made from it names the spec whose attacks it ran."""
        dataset_spec = self.dataset(dataset)
        dataset_spec = dataclasses.replace(dataset_spec, budgets={**dataset_spec.budgets, budget.name: budget})
        return dataclasses.replace(self, datasets={**self.datasets, dataset: dataset_spec})
