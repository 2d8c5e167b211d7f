"""Wilson intervals, interval overlap (ties on the leaderboard), and the exact tests of the
gradient-masking flags (docs/ranking.md)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from benchmark.evaluation.stats import (
    binomial_tail,
    intervals_overlap,
    mcnemar_exact,
    paired_test,
    significantly_greater,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n", "expected"), [
    (5, 10, (0.2366, 0.7634)),
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (1, 10, (0.0179, 0.4042)),
    (50, 100, (0.4038, 0.5962)),
    (81, 263, (0.2553, 0.3662)),
])
def test_wilson_known_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert round(low, 4) == expected[0]
    assert round(high, 4) == expected[1]


def test_wilson_confidence_changes_the_width():
    narrow = wilson_interval(5, 10, confidence=0.90)
    wide = wilson_interval(5, 10, confidence=0.99)
    assert (round(narrow[0], 4), round(narrow[1], 4)) == (0.2693, 0.7307)
    assert (round(wide[0], 4), round(wide[1], 4)) == (0.1842, 0.8158)


def test_wilson_empty_sample_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_endpoints_are_exact():
    # 0/n must include 0 and n/n must include 1 exactly (no 2.8e-17 from rounding), for any n.
    for n in range(1, 600):
        for confidence in (0.9, 0.95, 0.99):
            assert wilson_interval(0, n, confidence)[0] == 0.0
            assert wilson_interval(n, n, confidence)[1] == 1.0


def test_wilson_contains_p_and_is_within_unit_interval():
    for n in (1, 2, 3, 7, 10, 100, 500, 10000):
        for successes in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            low, high = wilson_interval(successes, n)
            assert 0.0 <= low <= successes / n <= high <= 1.0, (successes, n, low, high)
            assert low < high


def test_wilson_is_symmetric():
    for successes, n in ((3, 10), (0, 50), (120, 500)):
        low, high = wilson_interval(successes, n)
        mirror_low, mirror_high = wilson_interval(n - successes, n)
        assert low == pytest.approx(1 - mirror_high, abs=1e-12)
        assert high == pytest.approx(1 - mirror_low, abs=1e-12)


def test_wilson_narrows_with_n():
    widths = []
    for n in (10, 100, 1000, 10000):
        low, high = wilson_interval(n // 2, n)
        widths.append(high - low)
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    assert widths[-1] == pytest.approx(2 * 1.959964 * 0.5 / 100, rel=1e-3)   # normal approx.


@pytest.mark.parametrize(("successes", "n"), [(11, 10), (-1, 10), (1, 0), (0, -1)])
def test_wilson_rejects_out_of_range(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_wilson_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(5, 10, confidence)


# ---------------------------------------------------------------- overlap and significance

LOW = (0.1, 0.3)
HIGH = (0.5, 0.7)
TOUCHING = (0.3, 0.5)      # shares an endpoint with LOW and with HIGH
INSIDE = (0.55, 0.6)       # nested in HIGH
WIDE = (0.0, 1.0)


@pytest.mark.parametrize(("a", "b", "overlap"), [
    (LOW, HIGH, False),
    (HIGH, LOW, False),
    (LOW, TOUCHING, True),
    (TOUCHING, HIGH, True),
    (HIGH, INSIDE, True),
    (INSIDE, HIGH, True),
    (LOW, LOW, True),
    (WIDE, LOW, True),
    ((0.2, 0.4), (0.3, 0.6), True),
    ((0.2, 0.29), (0.3, 0.6), False),
])
def test_intervals_overlap(a, b, overlap):
    assert intervals_overlap(a, b) is overlap
    assert intervals_overlap(b, a) is overlap


@pytest.mark.parametrize(("a", "b", "greater"), [
    (HIGH, LOW, True),
    (LOW, HIGH, False),
    (HIGH, TOUCHING, False),   # sharing an endpoint is not significant
    (TOUCHING, LOW, False),
    (HIGH, INSIDE, False),
    (INSIDE, HIGH, False),
    (LOW, LOW, False),
    (WIDE, LOW, False),
    ((0.31, 0.4), LOW, True),
])
def test_significantly_greater(a, b, greater):
    assert significantly_greater(a, b) is greater


def test_significance_is_non_overlap_with_a_direction():
    intervals = [LOW, HIGH, TOUCHING, INSIDE, WIDE, (0.31, 0.4), (0.0, 0.0), (1.0, 1.0)]
    for a in intervals:
        for b in intervals:
            above, below = significantly_greater(a, b), significantly_greater(b, a)
            assert not (above and below)
            assert intervals_overlap(a, b) is not (above or below), (a, b)


def test_wilson_significance_on_counts():
    # 300/500 vs 200/500 is a clear difference; 260/500 vs 250/500 is not.
    assert significantly_greater(wilson_interval(300, 500), wilson_interval(200, 500))
    assert not significantly_greater(wilson_interval(200, 500), wilson_interval(300, 500))
    assert not significantly_greater(wilson_interval(260, 500), wilson_interval(250, 500))
    # Accuracy 0/500 against 3/500: intervals overlap, so no flag.
    assert intervals_overlap(wilson_interval(0, 500), wilson_interval(3, 500))


# ---------------------------------------------------------------- exact tests


@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (10, 0, Fraction(1, 2 ** 10)),       # all ten discordant pairs one way
    (12, 0, Fraction(1, 2 ** 12)),
    (1, 0, Fraction(1, 2)),
    (5, 1, Fraction(7, 64)),             # P(X >= 5), X ~ Bin(6, 1/2) = (6 + 1) / 64
    (3, 3, Fraction(42, 64)),            # (20 + 15 + 6 + 1) / 64
    (0, 0, Fraction(1)),                 # no discordant pair: no evidence
    (0, 10, Fraction(1)),
])
def test_mcnemar_exact_known_values(a_only, b_only, expected):
    assert mcnemar_exact(a_only, b_only) == float(expected)


def test_mcnemar_exact_is_one_sided():
    assert mcnemar_exact(10, 2) < 0.05 < mcnemar_exact(2, 10)
    assert mcnemar_exact(200, 0) == 2.0 ** -200   # exact integers: no underflow to a rounded value


def test_mcnemar_exact_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def _exact_tail(k: int, n: int, p: Fraction) -> Fraction:
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(("k", "n", "p"), [
    (1, 1, Fraction(1, 100)), (7, 10, Fraction(1, 2)), (4, 100, Fraction(1, 100)),
    (5, 100, Fraction(1, 100)), (30, 500, Fraction(1, 100)), (1, 100, Fraction(1, 100)),
])
def test_binomial_tail_matches_exact_fractions(k, n, p):
    assert binomial_tail(k, n, float(p)) == pytest.approx(float(_exact_tail(k, n, p)), rel=1e-10)


def test_binomial_tail_edges():
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(11, 10, 0.3) == 0.0
    assert binomial_tail(3, 10, 0.0) == 0.0 and binomial_tail(3, 10, 1.0) == 1.0
    assert binomial_tail(7, 10, 0.5) == pytest.approx(176 / 1024)


def test_paired_test_with_one_repeat_is_mcnemar():
    a = np.array([[1, 1, 1, 0, 1, 0]], dtype=bool)
    b = np.array([[1, 0, 0, 0, 1, 1]], dtype=bool)
    test = paired_test(a, b)
    assert (test.a_only, test.b_only) == (2, 1)
    assert test.p_value == mcnemar_exact(2, 1) == 0.5


def test_paired_test_compares_fractions_over_repeats():
    # Example fractions: a = [1, 1/2, 0, 1/2], b = [1, 0, 1/2, 1/2]; the last pair differs bit by bit
    # but not in fraction, so it is not discordant.
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 0, 0], [1, 0, 1, 1]], dtype=bool)
    test = paired_test(a, b)
    assert (test.a_only, test.b_only) == (1, 1)
    assert test.p_value == 0.75


def test_paired_test_accepts_different_repeats_and_refuses_different_examples():
    a = np.array([[1, 1, 0]], dtype=bool)                        # fractions 1, 1, 0
    b = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)  # 2/3, 1/3, 0
    assert (paired_test(a, b).a_only, paired_test(a, b).b_only) == (2, 0)
    with pytest.raises(ValueError, match="same examples"):
        paired_test(a, np.ones((1, 4), dtype=bool))
