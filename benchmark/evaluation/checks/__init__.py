"""Refuse a stateful or gradient-dependent defense before any attack runs.

Why: every accuracy threatbench reports assumes that a defense answers an input the same way however it
is asked. Attacks ask in one way (forward under grad, in the attack's batches, after the clean pass), the
judge in another (predict under no_grad), so a defense that tells the two apart can win without being
robust. A "memoriser" answers honestly when gradients are enabled, so white-box attacks see the real
network, and under no_grad gives any input within eps of one it saw before that earlier answer: the
clean answer comes back for every adversarial example (74% worst case where the honest network has
16%). Other cheats answer on `torch.is_grad_enabled()`, on the batch (batch statistics, the i-th row) or
on earlier queries (a counter, a cache). No attack can see this, so, as AutoAttack keeps its `checks`
apart from its attacks (Croce & Hein 2020), these checks run apart from them, once, before them.

How `evaluate` calls it: right after `probe_randomness`, on the same probe batch (any clean batch of
real images in [0, 1]; the first 64 are used, 16 for a randomized defense):

    detected = probe_randomness(defense, probe.x)
    randomized = defense.randomized or detected
    check_defense_is_consistent(defense, probe.x, eps=dataset_spec.eps, seed=seed,
                                randomized=randomized)

It returns None or raises `StatefulDefenseError`, a ThreatbenchError whose one-line message names the
failed check (its `check` attribute too) and what to fix. Parameters, train/eval mode and torch's global
random state are left as they were (model noise inside the check is drawn from a seed of its own).

The checks (docs/threat-model-checks.md), in this order, each on the clean inputs x and on one corner
of the eps ball per input, aimed at its decision boundary by one input-gradient step when the defense's
output has a gradient path to x (`torch.autograd.grad` w.r.t. the input only; otherwise a seeded random
corner):

1. grad-mode: forward under grad (the input requiring grad, as an attack calls it) vs predict under
   no_grad, predict under enable_grad and forward under no_grad, on the same batch.
2. history: the clean inputs and their neighbours are asked for in two batches, one half of the inputs
   clean first, the other half neighbour first, then both batches again; every answer must match a
   fresh evaluation of the same batch under grad (which a memoriser answers honestly) and the first
   answer. A memoriser that saw x gives a neighbour x's answer, which differs wherever the aimed step
   crossed the honest boundary.
3. batch: all of them again, shuffled, in batches of 1, 1, 1, 3, 5, 7, ... rows, against the answers
   in their original batches.

Deterministic defenses must agree exactly (`benchmark.evaluation.checks.deterministic`); randomized
defenses are compared in distribution (`benchmark.evaluation.checks.randomized`). Both ask through the
probe inputs and calls of `benchmark.evaluation.checks.probe`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from benchmark.errors import StatefulDefenseError
from benchmark.evaluation.checks.deterministic import check_deterministic
from benchmark.evaluation.checks.probe import STREAM, Probe
from benchmark.evaluation.checks.randomized import randomized_checks
from benchmark.models.defense import Defense
from benchmark.runtime.randomness import derive_seed

MAX_INPUTS = 64              # clean inputs of a deterministic defense
MAX_RANDOMIZED_INPUTS = 16   # of a randomized one: each condition runs ROUNDS times


def check_defense_is_consistent(defense: Defense, x: torch.Tensor, *, eps: float, seed: int,
                                randomized: bool) -> None:
    """Raise StatefulDefenseError when `defense` answers the same input differently depending on
    grad mode, batch composition and order, or earlier queries; see the module docstring."""
    if x.shape[0] == 0:
        return
    x = x[:MAX_RANDOMIZED_INPUTS if randomized else MAX_INPUTS].detach()
    with preserved_rng_state():
        _seed_model_noise(seed, x.device)
        probe = Probe.build(defense, x, eps, seed)
        if randomized:
            for comparison in randomized_checks(defense, probe, seed):
                if comparison.refused:
                    raise StatefulDefenseError(comparison.message(defense.name), comparison.check)
        else:
            check_deterministic(defense, probe, seed)


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore torch's CPU generator (and CUDA's, when initialized) on exit, so that an evaluation
    draws the same numbers whether or not the checks ran."""
    cpu = torch.get_rng_state()
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda = torch.cuda.get_rng_state_all() if cuda_ready else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _seed_model_noise(seed: int, device: torch.device) -> None:
    # Not torch.manual_seed: on a machine where CUDA is not initialized it would queue a CUDA seed that
    # runs at initialization, after the state is restored.
    value = derive_seed(seed, STREAM, "model-noise")
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(value)
