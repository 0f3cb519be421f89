"""Paired differences and their bootstrap interval, checked against hand computations on small tables."""

from __future__ import annotations

import numpy as np
import pytest

from acme_flwr import stats


def test_paired_differences_pair_by_key_and_leave_out_unmatched_pairs() -> None:
    # (seed, device) -> accuracy in points; device "2" of seed 1 is missing for b (a lost device)
    a = {(0, "0"): 90.0, (0, "1"): 80.0, (1, "0"): 70.0, (1, "2"): 60.0}
    b = {(0, "0"): 85.0, (0, "1"): 82.0, (1, "0"): 70.0}
    # by hand, in sorted key order: 90-85, 80-82, 70-70
    assert stats.paired_differences(a, b).tolist() == [5.0, -2.0, 0.0]
    p = stats.paired_comparison(a, b)
    assert p is not None and p.n == 3 and p.mean == pytest.approx(1.0)
    assert stats.paired_comparison(a, {(9, "9"): 1.0}) is None


def test_bootstrap_interval_matches_the_exact_resampling_distribution() -> None:
    """Differences (0, 0, 0, 4): a resample's mean is k, k ~ Binomial(4, 1/4), so by hand
    P(0) = 81/256 = .316, P(≤1) = .738, P(≤2) = .949, P(≤3) = .996: the 2.5 % quantile is 0 and the 97.5 % is 3."""
    low, high = stats.bootstrap_interval(np.array([0.0, 0.0, 0.0, 4.0]))
    assert (low, high) == (0.0, 3.0)
    p = stats.paired_comparison({i: d for i, d in enumerate([0.0, 0.0, 0.0, 4.0])}, dict.fromkeys(range(4), 0.0))
    assert p is not None and p.mean == 1.0 and p.verdict == stats.CANNOT_TELL  # 0 is inside [0, 3]
    # shifted by +1: (1, 1, 1, 5) -> [1, 4], which excludes 0: a beats b
    shifted = stats.paired_comparison(dict(enumerate([1.0, 1.0, 1.0, 5.0])), dict.fromkeys(range(4), 0.0))
    assert shifted is not None and (shifted.low, shifted.high) == (1.0, 4.0) and shifted.verdict == stats.BETTER
    flipped = stats.paired_comparison(dict.fromkeys(range(4), 0.0), dict(enumerate([1.0, 1.0, 1.0, 5.0])))
    assert flipped is not None and (flipped.low, flipped.high) == (-4.0, -1.0) and flipped.verdict == stats.WORSE


def test_bootstrap_interval_is_seeded_and_deterministic() -> None:
    diffs = np.random.default_rng(3).normal(0.5, 2.0, size=27)
    assert stats.bootstrap_interval(diffs) == stats.bootstrap_interval(diffs)
    assert stats.bootstrap_interval(diffs, seed=1) != stats.bootstrap_interval(diffs, seed=2)
    low, high = stats.bootstrap_interval(diffs)
    assert low < diffs.mean() < high
    # a constant difference has no spread: the interval is that value
    assert stats.bootstrap_interval(np.full(5, 2.5)) == (2.5, 2.5)


def test_an_interval_end_within_float32_noise_of_zero_counts_as_zero() -> None:
    assert stats.verdict(-2.2e-7, 0.8) == stats.CANNOT_TELL
    assert stats.verdict(2.2e-7, 0.8) == stats.CANNOT_TELL
    assert stats.verdict(0.01, 0.8) == stats.BETTER
    assert stats.verdict(-0.8, -0.01) == stats.WORSE


def test_format_signs_and_zero() -> None:
    assert stats.Paired(0.374, -1e-9, 0.8, 27).format() == "+0.37 [0.00, +0.80]"
    assert stats.Paired(-0.19, -0.62, 0.25, 27).format() == "−0.19 [−0.62, +0.25]"


@pytest.mark.parametrize("bad", [np.array([]), np.zeros((2, 2))])
def test_bootstrap_interval_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.bootstrap_interval(bad)
