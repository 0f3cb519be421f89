"""Paired comparisons of two methods on the same devices: per-pair differences and a percentile bootstrap interval.

Two methods run on the same seeds, devices and splits give one accuracy each per (seed, device) pair; their
difference per pair removes what the device itself contributes (its data, its package), so the mean difference is
measured far more precisely than by comparing two unpaired means. The interval resamples pairs with replacement
(seeded, so the same inputs always give the same interval). A method beats another only when the interval excludes 0;
otherwise the data cannot tell them apart. Plumbing: numpy only, no tier, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
# accuracies are stored as float32: two equal accuracies can differ by ~1e-7, so an interval end this close to 0
# (in the differences' own unit) counts as 0
ZERO_TOLERANCE = 1e-3

BETTER, WORSE, CANNOT_TELL = "better", "worse", "cannot tell"


@dataclass(frozen=True)
class Paired:
    """Mean of the per-pair differences ``a − b``, its bootstrap interval and the number of pairs."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        """``better`` (a beats b: the interval lies above 0), ``worse`` (below 0), or ``cannot tell``."""
        return verdict(self.low, self.high)

    def format(self, digits: int = 2) -> str:
        """``+0.37 [−0.01, +0.80]`` (signed, the interval in brackets; a value that rounds to zero is ``0.00``)."""
        def signed(x: float) -> str:
            r = round(x, digits) + 0.0  # + 0.0 turns −0.0 into 0.0
            return f"{r:.{digits}f}" if r == 0 else f"{r:+.{digits}f}".replace("-", "−")

        return f"{signed(self.mean)} [{signed(self.low)}, {signed(self.high)}]"


def verdict(low: float, high: float, tolerance: float = ZERO_TOLERANCE) -> str:
    """What an interval says about a difference: ``better`` / ``worse`` only when it excludes 0 (by ``tolerance``)."""
    if low > tolerance:
        return BETTER
    if high < -tolerance:
        return WORSE
    return CANNOT_TELL


def paired_differences(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> np.ndarray:
    """``a[k] − b[k]`` for every key both have, in sorted key order (pairs one side lacks, e.g. a lost device, are
    left out: a difference needs both)."""
    keys = sorted(set(a) & set(b), key=repr)
    return np.asarray([float(a[k]) - float(b[k]) for k in keys], dtype=np.float64)


def bootstrap_interval(diffs: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``: resample the pairs with replacement ``resamples``
    times (``numpy.random.default_rng(seed)``) and take the ``(1 ± level) / 2`` quantiles of the resampled means."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 1 or len(diffs) == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty 1-D array of differences; got shape {diffs.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1; got {resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_comparison(a: Mapping[Hashable, float], b: Mapping[Hashable, float], level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = SEED) -> Paired | None:
    """``a − b`` over the pairs both have, with its bootstrap interval; None when they share no pair."""
    diffs = paired_differences(a, b)
    if len(diffs) == 0:
        return None
    low, high = bootstrap_interval(diffs, level, resamples, seed)
    return Paired(mean=float(diffs.mean()), low=low, high=high, n=len(diffs))
