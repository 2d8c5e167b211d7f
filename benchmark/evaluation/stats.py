"""Confidence intervals, ties, and the exact tests of the gradient-masking flags (docs/ranking.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 and n the exact bounds are 0 and 1; rounding would leave e.g. 2.8e-17 as the lower bound
    # of 0/n, an interval that does not contain the observed proportion.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return low, high


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def significantly_greater(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a lies entirely above b (non-overlapping 95% intervals)."""
    return a[0] > b[1]


# ---------------------------------------------------------------- exact tests


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed term by term in log space (exact up to rounding)."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and p in [0, 1], got n = {n}, p = {p}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p in (0.0, 1.0):
        return float(p == 1.0)
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """One-sided exact McNemar p-value that A is correct more often than B.

    `a_only` pairs have only A correct, `b_only` only B. Under the null each discordant pair goes
    either way with probability 1/2, so p = P(X >= a_only), X ~ Binomial(a_only + b_only, 1/2);
    computed with integers, so e.g. (10, 0) gives exactly 2**-10.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if a_only == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(a_only, n + 1)) / 2 ** n


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of A and B on the same examples: who wins where they differ, and the
    one-sided p-value that A is correct more often than B."""

    a_only: int
    b_only: int
    p_value: float


def paired_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Exact sign test that A is correct more often than B, on bool [repeats, n] outcomes.

    Each example's fraction correct over repeats is compared; examples where the fractions differ
    are the discordant pairs (Dixon & Mood 1946). With one repeat this is McNemar's exact test
    (McNemar 1947).
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=bool)), np.atleast_2d(np.asarray(b, dtype=bool))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired outcomes need the same examples, got n = {a.shape[1]} and {b.shape[1]}")
    # Cross-multiplied counts compare the fractions exactly, even when the repeats differ.
    a_score, b_score = a.sum(axis=0) * b.shape[0], b.sum(axis=0) * a.shape[0]
    a_only, b_only = int((a_score > b_score).sum()), int((b_score > a_score).sum())
    return PairedTest(a_only, b_only, mcnemar_exact(a_only, b_only))


def stratified_exact_greater(strata: list[tuple[int, int, int, int]]) -> float:
    """One-sided exact p-value that group 1 is more often correct than group 2 within strata.

    `strata`: (correct_1, n_1, correct_2, n_2) per stratum (for the held-out check: per class, group 1
    the evaluation subset, group 2 the rest of the test set). Conditional on each stratum's margins,
    correct_1 is hypergeometric under "no difference"; the p-value is P(sum of them >= observed), the
    exact distribution being the convolution of the strata's hypergeometric laws (the exact form of
    the Cochran-Mantel-Haenszel test; Fisher's exact test when there is one stratum). Stratifying keeps
    a different class mix in the two groups from passing for a difference in accuracy.
    """
    law, observed = np.ones(1), 0
    for correct_1, n_1, correct_2, n_2 in strata:
        if not (0 <= correct_1 <= n_1 and 0 <= correct_2 <= n_2):
            raise ValueError(f"need 0 <= correct <= n in every stratum, got {(correct_1, n_1, correct_2, n_2)}")
        law = np.convolve(law, _hypergeometric_law(correct_1 + correct_2, n_1, n_2))
        observed += correct_1 - max(0, correct_1 + correct_2 - n_2)
    return float(min(1.0, math.fsum(law[observed:])))


def _hypergeometric_law(correct: int, n_1: int, n_2: int) -> np.ndarray:
    """P(group 1 holds low + i of the `correct`) for i = 0, 1, ... with margins n_1 and n_2 fixed."""
    low, high = max(0, correct - n_2), min(correct, n_1)
    k = np.arange(low, high + 1)
    log_terms = np.array([_log_choose(n_1, int(i)) + _log_choose(n_2, correct - int(i)) for i in k]) \
        - _log_choose(n_1 + n_2, correct)
    return np.exp(log_terms)


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
