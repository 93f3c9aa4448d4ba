"""Means with 95 % bootstrap confidence intervals, paired differences, and verdicts that say "inconclusive" when
the intervals do not separate.

The study's numbers are Dice scores per test image of models trained with several seeds. A verdict compares two
means (BatchRenorm against BatchNorm, recalibrated against zero-shot) and must not call a difference that the
spread of images and seeds could produce by chance. Everything here is deterministic: the resampling generator is
seeded, so a results page regenerates identically.

- :func:`bootstrap_ci`: the percentile bootstrap of the mean (resampling the values with replacement).
- :func:`paired_difference`: the mean and interval of ``a - b`` over matched pairs (the same image and seed),
  which removes the image-to-image spread that unpaired intervals carry.
- :func:`compare`: "higher", "lower" or "inconclusive" from a paired difference's interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seamfree.errors import ConfigError

__all__ = ["BOOTSTRAP_RESAMPLES", "Estimate", "bootstrap_ci", "compare", "paired_difference"]

BOOTSTRAP_RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean, its 95 % bootstrap interval [low, high] and the number of values it rests on."""

    mean: float
    low: float
    high: float
    count: int

    def overlaps(self, other: Estimate) -> bool:
        """Whether the two intervals share any value."""
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.count})"

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "count": self.count}


def bootstrap_ci(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of ``values`` with its 95 % percentile-bootstrap interval.

    ``resamples`` means of ``len(values)`` values drawn with replacement (seeded); the interval is their 2.5th and
    97.5th percentiles (the lower and higher order statistics, never interpolated between resampled means). One
    value gives an interval of zero width, which the verdicts treat as no evidence (see :func:`compare`).

    Examples
    --------
    >>> print(bootstrap_ci([0.0, 0.0, 0.0, 1.0]))  # resampled means: Binomial(4, 1/4) / 4
    0.250 [0.000, 0.750] (n=4)
    """
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if data.size == 0 or not np.all(np.isfinite(data)):
        raise ConfigError(f"a confidence interval needs finite values, got {list(values)!r}")
    if resamples < 100:
        raise ConfigError(f"resamples must be at least 100 for a 95 % interval, got {resamples}")
    rng = np.random.default_rng(seed)
    means = np.sort(data[rng.integers(0, data.size, (resamples, data.size))].mean(axis=1))
    tail = (1 - LEVEL) / 2
    low = means[math.floor(tail * (resamples - 1))]
    high = means[math.ceil((1 - tail) * (resamples - 1))]
    return Estimate(float(data.mean()), float(low), float(high), int(data.size))


def paired_difference(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> Estimate:
    """The mean of ``a[i] - b[i]`` over matched pairs, with its bootstrap interval."""
    if len(a) != len(b):
        raise ConfigError(f"paired values must match one to one, got {len(a)} and {len(b)}")
    return bootstrap_ci([x - y for x, y in zip(a, b)], seed=seed)


def compare(difference: Estimate, *, min_count: int = 3) -> str:
    """"higher" when the whole interval of a difference is above 0, "lower" when below, else "inconclusive";
    fewer than ``min_count`` pairs are inconclusive whatever their values."""
    if difference.count < min_count:
        return "inconclusive"
    if difference.low > 0:
        return "higher"
    if difference.high < 0:
        return "lower"
    return "inconclusive"
