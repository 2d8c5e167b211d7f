"""The consistency checks (`benchmark.evaluation.checks`) of a randomized defense.

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

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.evaluation.checks.probe import (
    BATCH,
    FIX,
    GRAD_MODE,
    HISTORY,
    Labels,
    Probe,
    forward_no_grad,
    forward_under_grad,
    predict,
    predict_in_chunks,
    seeded_order,
)
from benchmark.models.defense import Defense

ROUNDS = 16                  # 2 / C(32, 16) = 3.3e-9: the smallest two-sided p-value, far below ALPHA
FALSE_REFUSAL_RATE = 1e-4    # of an honest randomized defense, per evaluation
RANDOMIZED_TESTS = 6
ALPHA = FALSE_REFUSAL_RATE / RANDOMIZED_TESTS
ALONE_INPUTS = 16            # randomized batch check: inputs asked alone and in their original batch


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


def randomized_checks(defense: Defense, probe: Probe, seed: int) -> Iterator[Comparison]:
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


def _randomized_batch_checks(defense: Defense, probe: Probe, seed: int) -> Iterator[Comparison]:
    pool, device = probe.pool, probe.x.device
    foreign = torch.cat([probe.x, 1.0 - probe.neighbours])   # the clean inputs among other companions
    alone = seeded_order(len(pool), seed, "alone-inputs", 0, device)[:ALONE_INPUTS].tolist()
    conditions = ("original", "shuffled", "foreign", "alone", "own")
    draws: dict[str, list[torch.Tensor]] = {condition: [] for condition in conditions}
    for round_index in range(ROUNDS):
        shuffle = seeded_order(len(pool), seed, "shuffle", round_index, device)
        mixed = seeded_order(len(foreign), seed, "foreign", round_index, device)
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


def _in_original_batch(defense: Defense, probe: Probe, row: int) -> torch.Tensor:
    """The answer to pool row `row` asked in its own batch (`first` or `second`), one call per row."""
    size = len(probe.first)
    batch, position = (probe.first, row) if row < size else (probe.second, row - size)
    return predict(defense, batch)[position]


def smallest_p_value(rounds: int = ROUNDS) -> float:
    """The smallest two-sided p-value a comparison of `rounds` against `rounds` can reach."""
    return 2.0 / math.comb(2 * rounds, rounds)
