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

Deterministic defenses must agree exactly, label for label. The only tolerance is on the reference
logits: a label within LOGIT_TOLERANCE of the top logit counts as the same answer, so float differences
between batch sizes or kernels at an argmax tie are not refusals. When a grad-mode or batch comparison
disagrees, the calls are repeated to tell apart what it depends on: answers that change on a repeat of
the same call are reported as history (a counter), the others as grad-mode or batch.
Cost: 12 n images through the model plus one input gradient of n images (n = 64: 768 + 64).

Randomized defenses are compared in distribution, in six comparisons of two conditions each:
grad-mode: forward under grad vs under no_grad, and predict under enable_grad vs under no_grad (a
defense's own predict may not set no_grad; forward is one draw, predict a vote for a smoothed defense,
so forward is only compared with forward); history: forward under grad vs under no_grad on the two
history batches, asked after the clean inputs; batch: the pool of both batches in one call vs the same
call shuffled, the clean inputs among their neighbours vs among other companions (1 - neighbour) in a
call of the same size, and ALONE_INPUTS inputs each asked alone vs each in its original batch, one call
per input. Each comparison runs ROUNDS rounds of both conditions, alternating; per round it counts the
inputs answered with their majority label (pooled over both conditions, so the label favors neither)
and an exact two-sample permutation test compares the per-round counts. Rounds, not images, are the
independent units: a defense may share one noise draw across a call (PNI-W draws one weight noise per
batch), so the images of one call are not independent, but calls are; the two conditions of each
comparison make the same calls under an honest defense (same rows, same call sizes, each measured input
sharing a call with the same number of other measured inputs), so the test is exact for any randomized
defense. Six tests at ALPHA = 1e-4 / 6 each: an honest randomized defense is refused with probability
below 1e-4 per evaluation (union bound). With 16 rounds a test can reach p = 3.3e-9: a cheat that moves
the agreement in all but one round of each condition is refused (p = 8.1e-7).
Cost per round, n = 16: 96 images through forward and 400 through predict; 16 rounds: 1536 + 6400,
plus one input gradient of n images (a smoothed defense's predict costs its m draws per image).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.errors import StatefulDefenseError
from benchmark.models.defense import Defense
from benchmark.runtime.randomness import derive_seed, example_generator, per_example_sign

GRAD_MODE = "grad-mode"
HISTORY = "history"
BATCH = "batch"

MAX_INPUTS = 64              # clean inputs of a deterministic defense
MAX_RANDOMIZED_INPUTS = 16   # of a randomized one: each condition runs ROUNDS times
LOGIT_TOLERANCE = 1e-3       # relative to 1 + the row's largest |logit|; covers TF32 and kernel choice
ROUNDS = 16                  # 2 / C(32, 16) = 3.3e-9: the smallest two-sided p-value, far below ALPHA
FALSE_REFUSAL_RATE = 1e-4    # of an honest randomized defense, per evaluation
RANDOMIZED_TESTS = 6
ALPHA = FALSE_REFUSAL_RATE / RANDOMIZED_TESTS
ALONE_INPUTS = 16            # randomized batch check: inputs asked alone and in their original batch
STREAM = "checks"
FIX = ("a defense must answer the same input the same way in every call: no caches, call counters, "
       "batch statistics or branches on torch.is_grad_enabled()")

Labels = Callable[[], torch.Tensor]


def check_defense_is_consistent(defense: Defense, x: torch.Tensor, *, eps: float, seed: int,
                                randomized: bool) -> None:
    """Raise StatefulDefenseError when `defense` answers the same input differently depending on
    grad mode, batch composition and order, or earlier queries; see the module docstring."""
    if x.shape[0] == 0:
        return
    x = x[:MAX_RANDOMIZED_INPUTS if randomized else MAX_INPUTS].detach()
    with preserved_rng_state():
        _seed_model_noise(seed, x.device)
        probe = _Probe.build(defense, x, eps, seed)
        if randomized:
            for comparison in _randomized_checks(defense, probe, seed):
                if comparison.refused:
                    raise StatefulDefenseError(comparison.message(defense.name), comparison.check)
        else:
            _check_deterministic(defense, probe, seed)


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


# ---------------------------------------------------------------- inputs


@dataclass
class _Probe:
    """Clean inputs, one aimed neighbour per input, and the two history batches.

    `first` = clean inputs of the even rows + neighbours of the odd rows, `second` = the reverse, so
    that asking `first` then `second` queries half of the inputs clean first, half neighbour first.
    """

    x: torch.Tensor
    clean_logits: torch.Tensor      # forward under grad on x, the input requiring grad
    neighbours: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    clean_rows: torch.Tensor        # where x[i] sits in `pool`

    @classmethod
    def build(cls, defense: Defense, x: torch.Tensor, eps: float, seed: int) -> _Probe:
        neighbours, clean_logits = aimed_neighbours(defense, x, eps, seed)
        even, odd = torch.arange(0, len(x), 2), torch.arange(1, len(x), 2)
        first = torch.cat([x[even], neighbours[odd]])
        second = torch.cat([neighbours[even], x[odd]])
        clean_rows = torch.empty(len(x), dtype=torch.long)
        clean_rows[even] = torch.arange(len(even))
        clean_rows[odd] = len(x) + len(even) + torch.arange(len(odd))
        return cls(x, clean_logits, neighbours, first, second, clean_rows.to(x.device))

    @property
    def pool(self) -> torch.Tensor:
        return torch.cat([self.first, self.second])


def aimed_neighbours(defense: Defense, x: torch.Tensor, eps: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One corner of the eps ball per input (clipped to [0, 1]) and forward-under-grad logits of x.

    The corner steps against the gradient of the top-two logit margin (one FGSM step), so that the
    honest answer changes for many inputs: a memoriser is only caught where it does. Pixels without a
    gradient (a cut gradient path, a zero) get a seeded random sign; no gradient is needed to pass.
    """
    x_var = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = defense(x_var)
        gradient = _margin_gradient(logits, x_var)
    indices = torch.arange(x.shape[0])
    direction = per_example_sign(tuple(x.shape[1:]), indices, seed, f"{STREAM}/neighbour-sign").to(x)
    if gradient is not None:
        aimed = -torch.nan_to_num(gradient).sign()
        direction = torch.where(aimed != 0, aimed, direction)
    return (x + eps * direction).clamp(0.0, 1.0), logits.detach()


def _margin_gradient(logits: torch.Tensor, x_var: torch.Tensor) -> torch.Tensor | None:
    if not logits.requires_grad or logits.shape[1] < 2:
        return None
    top = logits.topk(2, dim=1).values
    (gradient,) = torch.autograd.grad((top[:, 0] - top[:, 1]).sum(), x_var, allow_unused=True)
    return gradient


# ---------------------------------------------------------------- the calls compared


def forward_under_grad(defense: Defense, x: torch.Tensor) -> torch.Tensor:
    """Logits as a white-box attack gets them: grad enabled, the input requiring grad."""
    with torch.enable_grad():
        return defense(x.detach().requires_grad_(True)).detach()


def forward_no_grad(defense: Defense, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return defense(x)


def predict(defense: Defense, x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    with torch.enable_grad() if grad else torch.no_grad():
        return defense.predict(x)


def predict_in_chunks(defense: Defense, x: torch.Tensor, order: torch.Tensor,
                      sizes: list[int]) -> torch.Tensor:
    """Labels of x asked in the order `order`, `sizes` rows per call, put back in x's order."""
    shuffled = torch.cat([predict(defense, chunk) for chunk in x[order].split(sizes)])
    labels = torch.empty_like(shuffled)
    labels[order] = shuffled
    return labels


def odd_chunk_sizes(total: int) -> list[int]:
    """1, 1, 1, 3, 5, 7, ... rows per call (the last one what is left): three inputs alone, then
    batches of sizes no attack uses."""
    sizes, size = [], 1
    while sum(sizes) < total:
        sizes.append(min(size, total - sum(sizes)))
        size = 1 if len(sizes) < 3 else size + 2
    return sizes


def _order(n: int, seed: int, purpose: str, index: int, device: torch.device) -> torch.Tensor:
    return torch.randperm(n, generator=example_generator(seed, f"{STREAM}/{purpose}", index)).to(device)


# ---------------------------------------------------------------- deterministic defenses


def accepted_labels(logits: torch.Tensor) -> torch.Tensor:
    """(n, classes) bool: the labels that count as the answer of these logits (the argmax and any
    class tied with it within LOGIT_TOLERANCE)."""
    top = logits.max(dim=1, keepdim=True).values
    scale = 1.0 + logits.abs().max(dim=1, keepdim=True).values
    return logits >= top - LOGIT_TOLERANCE * scale


def disagreements(labels: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    return ~accepted.gather(1, labels.view(-1, 1).long()).view(-1)


def _signature(labels: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """The labels where they disagree with the reference, -1 elsewhere: what a repeat must reproduce."""
    return torch.where(disagreements(labels, accepted), labels.long(), -1)


def _check_deterministic(defense: Defense, probe: _Probe, seed: int) -> None:
    _check_grad_mode(defense, probe)
    accepted, answers = _check_history(defense, probe)
    _check_batch(defense, probe, accepted, answers, seed)


def _check_grad_mode(defense: Defense, probe: _Probe) -> None:
    x, accepted = probe.x, accepted_labels(probe.clean_logits)
    calls: dict[str, Labels] = {
        "predict under no_grad": lambda: predict(defense, x),
        "predict under enable_grad": lambda: predict(defense, x, grad=True),
        "forward under no_grad": lambda: forward_no_grad(defense, x).argmax(dim=1),
    }
    answers = {name: call() for name, call in calls.items()}
    counts = {name: int(disagreements(labels, accepted).sum()) for name, labels in answers.items()}
    worst = max(counts, key=counts.__getitem__)
    if counts[worst] == 0:
        return
    reference: Labels = lambda: forward_under_grad(defense, x).argmax(dim=1)   # noqa: E731
    repeated = [reference, *calls.values()]
    first = [probe.clean_logits.argmax(dim=1), *answers.values()]
    _raise_if_repeats_differ(defense, repeated, first, accepted, f"{worst} on the clean inputs")
    switches = counts["forward under no_grad"] or not torch.equal(answers["predict under no_grad"],
                                                                 answers["predict under enable_grad"])
    what = ("predictions depend on whether gradients are enabled" if switches
            else "predict does not answer the argmax of forward, the logits white-box attacks follow")
    raise StatefulDefenseError(
        f"{defense.name}: refused by the {GRAD_MODE} check: {what} ({worst} and forward under grad "
        f"disagree on {counts[worst]} of {len(x)} clean inputs); {FIX}", GRAD_MODE)


def _check_history(defense: Defense, probe: _Probe) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the accepted labels of `pool` under grad and its answers in the original batches."""
    batches = (probe.first, probe.second)
    accepted = torch.cat([accepted_labels(forward_under_grad(defense, batch)) for batch in batches])
    first_time = torch.cat([predict(defense, batch) for batch in batches])
    second_time = torch.cat([predict(defense, batch) for batch in batches])
    fresh = int((disagreements(first_time, accepted) | disagreements(second_time, accepted)).sum())
    changed = int((_signature(first_time, accepted) != _signature(second_time, accepted)).sum())
    total = len(first_time)
    if fresh:
        raise StatefulDefenseError(
            f"{defense.name}: refused by the {HISTORY} check: predictions depend on what was queried "
            f"before ({fresh} of {total} inputs, each asked after an input within eps of it, were "
            f"answered differently from a fresh evaluation of the same batch under grad); {FIX}", HISTORY)
    if changed:
        _raise_history(defense, changed, total, "both batches asked twice")
    return accepted, second_time


def _check_batch(defense: Defense, probe: _Probe, accepted: torch.Tensor, original: torch.Tensor,
                 seed: int) -> None:
    pool = probe.pool
    order, sizes = _order(len(pool), seed, "batch-order", 0, pool.device), odd_chunk_sizes(len(pool))
    chunked = predict_in_chunks(defense, pool, order, sizes)
    count = int(disagreements(chunked, accepted).sum())
    if count == 0:
        return
    calls: list[Labels] = [
        lambda: torch.cat([predict(defense, probe.first), predict(defense, probe.second)]),
        lambda: predict_in_chunks(defense, pool, order, sizes),
    ]
    _raise_if_repeats_differ(defense, calls, [original, chunked], accepted, "the shuffled batches")
    raise StatefulDefenseError(
        f"{defense.name}: refused by the {BATCH} check: predictions depend on the batch an input is in "
        f"({count} of {len(pool)} inputs were answered differently in a shuffled order, in batches of "
        f"{', '.join(map(str, sizes))} rows, than in their original batch of {len(probe.first)}); {FIX}",
        BATCH)


def _raise_if_repeats_differ(defense: Defense, calls: list[Labels], first: list[torch.Tensor],
                             accepted: torch.Tensor, where: str) -> None:
    """Repeat every call, in reverse order then in order: a call whose answers change is history,
    whatever else differed (a call counter can make any single comparison look like grad mode)."""
    for order in (reversed(range(len(calls))), range(len(calls))):
        for index in order:
            expected = _signature(first[index], accepted)
            changed = int((_signature(calls[index](), accepted) != expected).sum())
            if changed:
                _raise_history(defense, changed, len(expected), where)


def _raise_history(defense: Defense, changed: int, total: int, where: str) -> None:
    raise StatefulDefenseError(
        f"{defense.name}: refused by the {HISTORY} check: predictions depend on what was queried before "
        f"(repeating the same call on the same batch ({where}) changed {changed} of {total} answers); "
        f"{FIX}", HISTORY)


# ---------------------------------------------------------------- randomized defenses


@dataclass(frozen=True)
class Comparison:
    """Two conditions over ROUNDS rounds: per-round counts of inputs given their majority label."""

    check: str
    first: str
    second: str
    first_counts: tuple[int, ...]
    second_counts: tuple[int, ...]
    inputs: int
    p_value: float

    @property
    def refused(self) -> bool:
        return self.p_value < ALPHA

    def message(self, name: str) -> str:
        rates = [sum(counts) / (len(counts) * self.inputs)
                 for counts in (self.first_counts, self.second_counts)]
        what = {GRAD_MODE: "whether gradients are enabled", HISTORY: "what was queried before",
                BATCH: "the batch an input is in"}[self.check]
        return (f"{name}: refused by the {self.check} check: the distribution of predictions depends on "
                f"{what} ({self.first} gives {self.inputs} inputs their majority label in {rates[0]:.1%} "
                f"of {len(self.first_counts)} draws, {self.second} in {rates[1]:.1%}; exact permutation "
                f"test p = {self.p_value:.1e} < {ALPHA:.1e}); {FIX}")


def compare(check: str, first: str, second: str, draw_first: Labels, draw_second: Labels) -> Comparison:
    """ROUNDS draws of each condition, alternating, compared through their majority labels."""
    firsts, seconds = [], []
    for _ in range(ROUNDS):
        firsts.append(draw_first())
        seconds.append(draw_second())
    return comparison_of(check, first, second, torch.stack(firsts), torch.stack(seconds))


def comparison_of(check: str, first: str, second: str, first_labels: torch.Tensor,
                  second_labels: torch.Tensor) -> Comparison:
    """`*_labels`: (rounds, inputs). The majority label of each input is taken over both conditions:
    swapping the conditions of any rounds leaves it unchanged, which keeps the permutation test exact."""
    pooled = torch.cat([first_labels, second_labels]).long()
    votes = torch.nn.functional.one_hot(pooled, int(pooled.max()) + 1).sum(dim=0)
    majority = votes.argmax(dim=1)
    first_counts = tuple((first_labels == majority).sum(dim=1).tolist())
    second_counts = tuple((second_labels == majority).sum(dim=1).tolist())
    return Comparison(check, first, second, first_counts, second_counts, first_labels.shape[1],
                      permutation_p_value(first_counts, second_counts))


def permutation_p_value(first: tuple[int, ...] | list[int], second: tuple[int, ...] | list[int]) -> float:
    """Exact two-sided p-value of sum(first) over all ways to split the pooled counts into two groups
    of these sizes (counted by dynamic programming over (group size, sum))."""
    values = [int(v) for v in (*first, *second)]
    size, total = len(first), sum(values)
    ways = np.zeros((size + 1, total + 1))
    ways[0, 0] = 1.0
    for value in values:
        shifted = np.zeros_like(ways)
        shifted[1:, value:] = ways[:-1, :total + 1 - value]
        ways += shifted
    sums = ways[size]
    centre = total * size / len(values)
    distance = abs(sum(first) - centre)
    extreme = np.abs(np.arange(total + 1) - centre) >= distance - 1e-9
    return float(min(1.0, sums[extreme].sum() / sums.sum()))


def _randomized_checks(defense: Defense, probe: _Probe, seed: int) -> Iterator[Comparison]:
    """The six comparisons, lazily (a refusal stops the rest). Under an honest defense the two
    conditions of each issue the same calls: the same batch (grad mode, history), the same rows in
    one call of the same size (order, foreign companions), each measured input in a call of its own
    (alone vs in its original batch)."""
    x, first, second = probe.x, probe.first, probe.second
    yield compare(GRAD_MODE, "forward under grad", "forward under no_grad",
                  lambda: forward_under_grad(defense, x).argmax(dim=1),
                  lambda: forward_no_grad(defense, x).argmax(dim=1))
    yield compare(GRAD_MODE, "predict under enable_grad", "predict under no_grad",
                  lambda: predict(defense, x, grad=True), lambda: predict(defense, x))
    yield compare(HISTORY, "forward under grad", "forward under no_grad after nearby queries",
                  lambda: torch.cat([forward_under_grad(defense, b).argmax(dim=1) for b in (first, second)]),
                  lambda: torch.cat([forward_no_grad(defense, b).argmax(dim=1) for b in (first, second)]))
    yield from _randomized_batch_checks(defense, probe, seed)


def _randomized_batch_checks(defense: Defense, probe: _Probe, seed: int) -> Iterator[Comparison]:
    pool, device = probe.pool, probe.x.device
    foreign = torch.cat([probe.x, 1.0 - probe.neighbours])   # the clean inputs among other companions
    alone = _order(len(pool), seed, "alone-inputs", 0, device)[:ALONE_INPUTS].tolist()
    conditions = ("original", "shuffled", "foreign", "alone", "own")
    draws: dict[str, list[torch.Tensor]] = {condition: [] for condition in conditions}
    for round_index in range(ROUNDS):
        shuffle = _order(len(pool), seed, "shuffle", round_index, device)
        mixed = _order(len(foreign), seed, "foreign", round_index, device)
        draws["original"].append(predict(defense, pool))
        draws["shuffled"].append(predict_in_chunks(defense, pool, shuffle, [len(pool)]))
        draws["foreign"].append(predict_in_chunks(defense, foreign, mixed, [len(foreign)])[:len(probe.x)])
        draws["alone"].append(torch.cat([predict(defense, pool[i:i + 1]) for i in alone]))
        draws["own"].append(torch.stack([_in_original_batch(defense, probe, i) for i in alone]))
    stacked = {k: torch.stack(v) for k, v in draws.items()}
    yield comparison_of(BATCH, "the original batch", "the same batch shuffled",
                        stacked["original"], stacked["shuffled"])
    yield comparison_of(BATCH, "the original batch", "a batch of other companions",
                        stacked["original"][:, probe.clean_rows], stacked["foreign"])
    yield comparison_of(BATCH, "each input alone", "each input in its original batch",
                        stacked["alone"], stacked["own"])


def _in_original_batch(defense: Defense, probe: _Probe, row: int) -> torch.Tensor:
    """The answer to pool row `row` asked in its own batch (`first` or `second`), one call per row."""
    size = len(probe.first)
    batch, position = (probe.first, row) if row < size else (probe.second, row - size)
    return predict(defense, batch)[position]


def smallest_p_value(rounds: int = ROUNDS) -> float:
    """The smallest two-sided p-value a comparison of `rounds` against `rounds` can reach."""
    return 2.0 / math.comb(2 * rounds, rounds)
