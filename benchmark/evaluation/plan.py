"""What an evaluation measures for one entry, in order: the measurements and each family's status.

Clean accuracy, each white-box attack, each transfer attack from each held-out source, NAttack, and
the eps = 1 PGD diagnostic. A measurement is a name, a number of examples, a batch size and an
adversary that turns a batch into the images to classify; `benchmark.evaluation.loop` runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmark.attacks.gradient import AttackBatch, PassCounter, check_perturbation, run_white_box
from benchmark.attacks.nattack import nattack
from benchmark.attacks.sources import load_held_out_sources, transfer_cache_dir
from benchmark.attacks.transfer import (
    CraftedExamples,
    TransferCache,
    TransferSource,
    sources_with_ensemble,
)
from benchmark.errors import ThreatbenchError
from benchmark.evaluation.batch_sizes import BatchSizes
from benchmark.evaluation.cascade import adaptive_subsample
from benchmark.evaluation.entry import EntryInfo
from benchmark.models.defense import Defense
from benchmark.spec import (
    ADAPTIVE_ATTACK,
    FAMILIES,
    TRANSFER_ATTACKS,
    UNBOUNDED_DIAGNOSTIC,
    WHITE_BOX_DETERMINISTIC,
    WHITE_BOX_RANDOMIZED,
    AdaptivePolicy,
    Budget,
    DatasetSpec,
    Spec,
)

SPEC_V1_ADAPTIVE = AdaptivePolicy()   # NAttack on the first nattack_n examples, no cascade

# Produces the images to classify for a batch, and the queries spent per example (or None).
Adversary = Callable[[AttackBatch, PassCounter], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Measurement:
    name: str
    family: str                # clean | white_box | transfer | adaptive | diagnostic
    n: int                     # outcome columns: the first n examples of the subset
    batch_size: int
    adversary: Adversary
    params: dict[str, Any] = field(default_factory=dict)
    # The adaptive family under spec v2: its subsample (bool [n]) and whether it attacks only the
    # survivors of the families before it; `examples` (the indices it attacks) is set when they are known.
    subsample: np.ndarray | None = None
    cascade: bool = False
    examples: np.ndarray | None = None

    def positions(self) -> np.ndarray:
        """The example indices measured, in order: the first n, or the attacked ones."""
        return np.arange(self.n) if self.examples is None else self.examples


@dataclass(frozen=True)
class Conditions:
    """What an evaluation fixed before its plan: the spec's tables for this entry, and how it is run."""

    spec: Spec
    dataset: DatasetSpec
    budget: Budget
    seed: int
    device: torch.device
    precision: str
    randomized: bool           # declared or detected: attacked with EOT, predictions repeated
    batches: BatchSizes

    @property
    def repeats(self) -> int:
        """Predictions per image: their mean is the accuracy of a randomized entry."""
        return self.spec.randomized.prediction_repeats if self.randomized else 1

    @property
    def draws(self) -> int | None:
        """EOT draws per gradient, for a randomized entry."""
        return self.dataset.attacks["epgd"].draws if self.randomized else None


@dataclass
class Plan:
    measurements: list[Measurement]
    family_status: dict[str, dict[str, Any]]
    transfer_cache: TransferCache | None = None


def plan_measurements(conditions: Conditions, defense: Defense, eval_set, entry: EntryInfo, *,
                      families: tuple[str, ...], sources: list[TransferSource] | None,
                      cascade: bool | None, adaptive_examples: np.ndarray | None) -> Plan:
    """The measurements of the requested families, in the order they run; the others not run."""
    plan = Plan([clean_measurement(conditions)], {})
    if "white_box" in families:
        plan.measurements += white_box_family(conditions, defense)
        plan.family_status["white_box"] = {"status": "run"}
    if "transfer" in families:
        plan.transfer_cache, plan.family_status["transfer"], transfer = transfer_measurements(
            conditions, eval_set, entry, sources)
        plan.measurements += transfer
    if "adaptive" in families:
        plan.measurements.append(adaptive_measurement(conditions, defense, cascade, adaptive_examples))
        plan.family_status["adaptive"] = {"status": "run"}
    if "white_box" in families:
        plan.measurements.append(unbounded_diagnostic(conditions, defense))
    for family in FAMILIES:
        plan.family_status.setdefault(family, {"status": "not_run", "reason": "not requested (families=...)"})
    return plan


def check_families(families: tuple[str, ...]) -> None:
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ThreatbenchError(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")


# ---------------------------------------------------------------- clean and white-box


def white_box_attacks(dataset: DatasetSpec, randomized: bool) -> list[str]:
    """The white-box family for this entry; the margin-loss PGD only where the spec defines it (v2)."""
    names = WHITE_BOX_RANDOMIZED if randomized else WHITE_BOX_DETERMINISTIC
    return [name for name in names if name in dataset.attacks]


def white_box_family(conditions: Conditions, defense: Defense) -> list[Measurement]:
    dataset = conditions.dataset
    return [white_box_measurement(attack, dataset, defense, eps=dataset.eps, seed=conditions.seed,
                                  draws=conditions.draws, n=conditions.budget.n,
                                  batch_size=conditions.batches.images)
            for attack in white_box_attacks(dataset, conditions.randomized)]


def _clean(batch: AttackBatch, counter: PassCounter):
    return batch.x, None


def clean_measurement(conditions: Conditions) -> Measurement:
    return Measurement("clean", "clean", conditions.budget.n, conditions.batches.images, _clean)


def white_box_measurement(attack: str, dataset: DatasetSpec, defense: Defense, *, eps: float, seed: int,
                          draws: int | None, n: int, batch_size: int, name: str | None = None,
                          family: str = "white_box") -> Measurement:
    params = dataset.attacks[attack]
    if draws is not None:
        params = dataclasses.replace(params, draws=draws)
    if eps != dataset.eps and params.step_size is not None:   # the eps = 1 diagnostic scales its step
        params = dataclasses.replace(params, step_size=2.5 * eps / params.steps)

    def adversary(batch, counter):
        return run_white_box(attack, defense, batch, params, eps, seed, counter), None

    recorded = {**params.as_dict(), **({"eps": eps} if eps != dataset.eps else {})}
    return Measurement(name or attack, family, n, batch_size, adversary, recorded)


def unbounded_diagnostic(conditions: Conditions, defense: Defense) -> Measurement:
    """PGD at the spec's unbounded eps: an accuracy above zero there means a masked gradient."""
    unbounded = conditions.spec.diagnostics
    attack = "epgd" if conditions.randomized else "pgd"
    return white_box_measurement(attack, conditions.dataset, defense, eps=unbounded.unbounded_pgd_eps,
                                 seed=conditions.seed, draws=conditions.draws,
                                 n=min(unbounded.unbounded_pgd_examples, conditions.budget.n),
                                 batch_size=conditions.batches.images, name=UNBOUNDED_DIAGNOSTIC,
                                 family="diagnostic")


# ---------------------------------------------------------------- transfer


def transfer_measurements(conditions: Conditions, eval_set, entry: EntryInfo,
                          sources: list[TransferSource] | None,
                          ) -> tuple[TransferCache | None, dict[str, Any], list[Measurement]]:
    """Every transfer attack from every usable held-out source (and their ensemble), with the
    family's status; by default the spec's own sources, loaded and hash-checked."""
    dataset = conditions.dataset
    if sources is None:
        sources, reason = load_held_out_sources(dataset, device=conditions.device)
        if not sources:
            return None, {"status": "not_run", "reason": reason}, []
    usable = usable_sources(sources, entry, dataset.num_classes)
    if not usable:
        return None, {"status": "not_run",
                      "reason": "every held-out source is the evaluated model itself"}, []
    cache = TransferCache(transfer_cache_dir())
    # Examples crafted under another precision are cached apart from float32 ones.
    precision = conditions.precision
    spec_sha256 = conditions.spec.sha256 + ("" if precision == "float32" else f"+{precision}")
    batch_size = conditions.batches.images
    measurements = []
    for source in sources_with_ensemble(usable):
        for attack in TRANSFER_ATTACKS:
            crafted = CraftedExamples(source, attack, eval_set, dataset, seed=conditions.seed,
                                      spec_sha256=spec_sha256, cache=cache, batch_size=batch_size,
                                      device=conditions.device)
            measurements.append(transfer_measurement(source, attack, crafted, eps=dataset.eps,
                                                     n=conditions.budget.n, batch_size=batch_size,
                                                     dataset=dataset))
    status = {"status": "run", "sources": [{"name": s.name, "sha256": s.sha256} for s in usable]}
    excluded = [s.name for s in sources if s not in usable]
    if excluded:
        status["excluded_sources"] = {"names": excluded, "reason": "a model is never its own source"}
    return cache, status, measurements


def usable_sources(sources: list[TransferSource], entry: EntryInfo, num_classes: int) -> list[TransferSource]:
    """The held-out sources minus the target itself (a model is never its own source)."""
    for source in sources:
        if source.defense.num_classes != num_classes:
            raise ThreatbenchError(
                f"held-out source {source.name} has {source.defense.num_classes} classes, the target "
                f"has {num_classes}; the spec's sources must match the dataset"
            )
    own = (entry.weights or {}).get("sha256")
    return [s for s in sources if s.sha256 != own]


def transfer_measurement(source: TransferSource, attack: str, crafted: CraftedExamples, *, eps: float,
                         n: int, batch_size: int, dataset: DatasetSpec) -> Measurement:
    def adversary(batch, counter):
        x_adv = crafted.take(batch.indices).to(batch.x.device)
        check_perturbation(batch.x, x_adv, eps, f"transfer from {source.name}")
        return x_adv, None

    params = {**dataset.attacks[attack].as_dict(), "source": source.name, "source_sha256": source.sha256}
    return Measurement(f"transfer/{source.name}/{attack}", "transfer", n, batch_size, adversary, params)


# ---------------------------------------------------------------- adaptive


def adaptive_measurement(conditions: Conditions, defense: Defense, cascade: bool | None,
                         subsample: np.ndarray | None) -> Measurement:
    """NAttack under the spec's adaptive policy, its cascade overridden when `cascade` is given."""
    policy = conditions.spec.adaptive
    if cascade is not None:
        policy = dataclasses.replace(policy, cascade=cascade)
    return nattack_measurement(conditions.dataset, conditions.budget, defense, seed=conditions.seed,
                               batch_size=conditions.batches.populations, repeats=conditions.repeats,
                               randomized=conditions.randomized, adaptive=policy, subsample=subsample)


def judge_criterion(defense: Defense, repeats: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The judge's own test of an image, for decisions inside an attack: still correct in at least
    one of `repeats` predictions (the record then counts it per repeat)."""
    def still_correct(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        correct = defense.predict(images) == labels
        for _ in range(repeats - 1):
            correct |= defense.predict(images) == labels
        return correct

    return still_correct


def nattack_measurement(dataset: DatasetSpec, budget: Budget, defense: Defense, *, seed: int,
                        batch_size: int, repeats: int = 1, randomized: bool = False,
                        adaptive: AdaptivePolicy = SPEC_V1_ADAPTIVE, n: int | None = None,
                        subsample: np.ndarray | None = None) -> Measurement:
    """NAttack on the first `nattack_n` examples (spec v1), or on a seeded uniform subsample of the n
    examples, attacking only the survivors of the earlier families when `adaptive.cascade` (v2).
    `subsample` (bool [n]) replaces the seeded one: the regression replay passes the record's."""
    iterations = budget.nattack_max_iterations or dataset.nattack.max_iterations
    score_draws = dataset.nattack.score_draws if randomized else 1

    def adversary(batch, counter):
        result = nattack(defense, batch.x, batch.y, batch.indices, eps=dataset.eps,
                         params=dataset.nattack, seed=seed, max_iterations=iterations,
                         still_correct=judge_criterion(defense, repeats), criterion_queries=repeats,
                         score_draws=score_draws)
        counter.add(int(result.queries.sum()), backward=False)
        return result.x_adv, result.queries

    params = _nattack_params(dataset, iterations, randomized)
    if adaptive.subsample == "first":
        return Measurement(ADAPTIVE_ATTACK, "adaptive", budget.nattack_n, batch_size, adversary, params)
    n = budget.n if n is None else n
    if subsample is None:
        subsample = adaptive_subsample(n, budget.nattack_n, seed)
    params.update(subsample=adaptive.subsample, subsample_size=int(subsample.sum()), cascade=adaptive.cascade)
    return Measurement(ADAPTIVE_ATTACK, "adaptive", n, batch_size, adversary, params, subsample=subsample,
                       cascade=adaptive.cascade)


def _nattack_params(dataset: DatasetSpec, iterations: int, randomized: bool) -> dict[str, Any]:
    params = {**dataclasses.asdict(dataset.nattack), "max_iterations": iterations}
    if not randomized:
        params.pop("score_draws")
    params["search_shape"] = list(params["search_shape"])
    return params
