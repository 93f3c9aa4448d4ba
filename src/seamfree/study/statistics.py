"""Means with 95 % bootstrap confidence intervals that resample the experimental unit, paired differences, and
verdicts that say "inconclusive" when the intervals do not separate.

The study's numbers are scores per test image of models trained with several seeds. The seed is the experimental
unit: the images of one seed share one trained model, so they are not independent draws. An interval that resamples
image-and-seed cells as if they were independent is too narrow whenever models differ from seed to seed (a review
found 1.1–3.7× too narrow on the study's own data). With ``units=`` (one label per value, the seed), every interval
here is a two-stage bootstrap: draw the units with replacement, then the values within each drawn unit with
replacement, and average the unit means. Everything is deterministic: the resampling generator is seeded, so a
results page regenerates identically.

- :func:`bootstrap_ci`: the mean and its percentile-bootstrap interval (of the values, or of the units' means).
- :func:`paired_difference`: the same for ``a - b`` over matched pairs (the same image and seed), which removes the
  image-to-image spread that unpaired intervals carry.
- :func:`compare`: "higher", "lower" or "inconclusive" from a difference's interval (and the number of units).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from seamfree.errors import ConfigError

__all__ = ["BOOTSTRAP_RESAMPLES", "Estimate", "bootstrap_ci", "compare", "paired_difference"]

BOOTSTRAP_RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean, its bootstrap interval [low, high] at ``level``, the number of values it rests on, and, when the
    values came in units (seeds), the number of units and each unit's mean (in the order of first appearance)."""

    mean: float
    low: float
    high: float
    count: int
    units: int | None = None
    unit_means: tuple[float, ...] = ()
    level: float = LEVEL

    @property
    def independent(self) -> int:
        """How many independent draws the interval rests on: the units when there are units, else the values."""
        return self.count if self.units is None else self.units

    def overlaps(self, other: Estimate) -> bool:
        """Whether the two intervals share any value."""
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        if self.units is None:
            return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.count})"
        means = ", ".join(f"{m:+.3f}" if self.low < 0 else f"{m:.3f}" for m in self.unit_means)
        seeds = "1 seed; its mean" if self.units == 1 else f"{self.units} seeds; seed means"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.count} in {seeds} {means})"

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "count": self.count, "units": self.units,
                "unit_means": list(self.unit_means), "level": self.level}


def bootstrap_ci(values: Sequence[float], *, units: Sequence[Hashable] | None = None,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Estimate:
    """The mean of ``values`` with its percentile-bootstrap interval at ``level`` (95 % by default).

    Without ``units``: ``resamples`` means of ``len(values)`` values drawn with replacement (seeded); the interval
    is their (1 - level)/2 and (1 + level)/2 quantiles (order statistics, never interpolated). With ``units`` (one
    label per value, e.g. the seed of the model that made it): a two-stage bootstrap whose estimate is the mean of
    the unit means; each resample draws as many units as there are, with replacement, and within each drawn unit as
    many of its values as it has, with replacement. One value (or one unit) gives an interval of zero width, which
    the verdicts treat as no evidence (see :func:`compare`).

    Examples
    --------
    >>> print(bootstrap_ci([0.0, 0.0, 0.0, 1.0]))  # resampled means: Binomial(4, 1/4) / 4
    0.250 [0.000, 0.750] (n=4)
    >>> print(bootstrap_ci([0.1, 0.1, 0.3, 0.3], units=[0, 0, 1, 1]))  # two seeds: their means are all it knows
    0.200 [0.100, 0.300] (n=4 in 2 seeds; seed means 0.100, 0.300)
    """
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if data.size == 0 or not np.all(np.isfinite(data)):
        raise ConfigError(f"a confidence interval needs finite values, got {list(values)!r}")
    if resamples < 100:
        raise ConfigError(f"resamples must be at least 100 for an interval, got {resamples}")
    if not 0.5 <= level < 1:
        raise ConfigError(f"level must lie in [0.5, 1), got {level}")
    rng = np.random.default_rng(seed)
    if units is None:
        means = data[rng.integers(0, data.size, (resamples, data.size))].mean(axis=1)
        low, high = _quantiles(means, level)
        return Estimate(float(data.mean()), low, high, int(data.size), level=level)
    groups = _groups(data, units)
    # stage 2 first (cheaper to vectorize): every unit's resampled mean for every resample, shape (units, resamples)
    within = np.stack([group[rng.integers(0, group.size, (resamples, group.size))].mean(axis=1) for group in groups])
    chosen = rng.integers(0, len(groups), (resamples, len(groups)))  # stage 1: which units each resample draws
    means = within[chosen, np.arange(resamples)[:, None]].mean(axis=1)
    low, high = _quantiles(means, level)
    unit_means = tuple(float(group.mean()) for group in groups)
    return Estimate(float(np.mean(unit_means)), low, high, int(data.size), len(groups), unit_means, level)


def _groups(data: np.ndarray, units: Sequence[Hashable]) -> list[np.ndarray]:
    if len(units) != data.size:
        raise ConfigError(f"units must name the unit of every value: {data.size} values, {len(units)} units")
    order: dict[Hashable, list[int]] = {}
    for index, unit in enumerate(units):
        order.setdefault(unit, []).append(index)
    return [data[indices] for indices in order.values()]


def _quantiles(means: np.ndarray, level: float) -> tuple[float, float]:
    means = np.sort(means)
    tail = (1 - level) / 2
    count = means.size
    return float(means[math.floor(tail * (count - 1))]), float(means[math.ceil((1 - tail) * (count - 1))])


def paired_difference(a: Sequence[float], b: Sequence[float], *, units: Sequence[Hashable] | None = None,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Estimate:
    """The mean of ``a[i] - b[i]`` over matched pairs, with its bootstrap interval (over ``units`` when given:
    the seed of pair i, see :func:`bootstrap_ci`)."""
    if len(a) != len(b):
        raise ConfigError(f"paired values must match one to one, got {len(a)} and {len(b)}")
    return bootstrap_ci([x - y for x, y in zip(a, b)], units=units, resamples=resamples, seed=seed, level=level)


def compare(difference: Estimate, *, min_count: int = 3, margin: float = 0.0) -> str:
    """"higher" when the whole interval of a difference is above ``margin``, "lower" when below, else
    "inconclusive"; fewer than ``min_count`` independent draws (units when the estimate has units, else pairs) are
    inconclusive whatever their values."""
    if difference.independent < min_count:
        return "inconclusive"
    if difference.low > margin:
        return "higher"
    if difference.high < margin:
        return "lower"
    return "inconclusive"
