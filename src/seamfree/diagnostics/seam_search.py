"""The search of :func:`~seamfree.diagnostics.seam_grid.find_seams`: per axis and lag the best comb of every
period, its null from shuffled lines (a Gumbel fit of the shuffles' best combs), and one grid over all axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from seamfree.diagnostics.seam_lines import (
    FALSE_ALARM_RATE,
    MAX_PERIOD,
    MIN_LINES,
    MIN_PERIOD,
    PERMUTATIONS,
    baseline,
    comb_statistic,
    line_z,
    normal_tail,
    small_period,
    standardized,
)

__all__ = ["AxisGrid", "axis_lines", "axis_result", "axis_tests", "candidate_periods", "with_joint"]


@dataclass(frozen=True)
class AxisGrid:
    """What one spatial axis shows.

    Attributes
    ----------
    period, offset : int or None
        The best comb's period and offset (the first core start, in ``[0, period)``); None when the axis
        could not be tested.
    z : float or None
        The comb statistic (about standard normal without a grid).
    p_value : float or None
        One-sided p-value of ``z`` corrected for the ``candidates`` combs tried (Bonferroni, at most 1).
    candidates : int
        Combs tried along this axis (1 for a known grid).
    lines : int
        Seam lines of the best comb.
    small_period : int
        The prediction's own texture period along this axis (the reference lines' spacing).
    detected : bool
        ``p_value`` below the false-alarm rate (shared by all axes).
    score : float or None
        Mean step at the comb's lines / mean step at their reference lines (about 1 without seams).
    searched : tuple of int or None
        The smallest and largest period tried (a grid of a larger period has too few lines here to be seen).
    """

    period: int | None
    offset: int | None
    z: float | None
    p_value: float | None
    candidates: int
    lines: int
    small_period: int
    detected: bool = False
    score: float | None = None
    searched: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "offset": self.offset, "z": self.z, "p_value": self.p_value,
                "candidates": self.candidates, "lines": self.lines, "small_period": self.small_period,
                "detected": self.detected, "score": self.score,
                "searched_periods": None if self.searched is None else list(self.searched)}


@dataclass(frozen=True)
class _AxisLines:
    """One axis's lines: their steps, standardized z (None: untestable), texture period and excess steps."""

    steps: np.ndarray
    standardized: np.ndarray | None
    small: int
    excess: np.ndarray


def axis_lines(steps: dict[int, np.ndarray]) -> list[_AxisLines]:
    """One axis's lines at every lag, each aligned on the lag-1 lines (a lag-L line sits at its middle)."""
    first = standardized(line_z(steps[1], 1))
    small = 1 if first is None else small_period(first)
    result = []
    for lag, lag_steps in steps.items():
        spacing = small * math.ceil(lag / small)  # references beyond the line's own span
        values = first if spacing == 1 else standardized(line_z(lag_steps, spacing))
        excess = lag_steps - baseline(lag_steps, spacing)
        lines = steps[1].shape[0]
        result.append(_AxisLines(_aligned(lag_steps, lag, lines), None if values is None else
                                 _aligned(values, lag, lines), small, _aligned(excess, lag, lines)))
    return result


def _aligned(values: np.ndarray, lag: int, lines: int) -> np.ndarray:
    """``values`` of lag-``lag`` lines moved to the lag-1 line at their middle (NaN where none lies)."""
    if lag == 1:
        return values
    result = np.full((lines, *values.shape[1:]), np.nan)
    result[lag // 2:lag // 2 + values.shape[0]] = values
    return result


@dataclass(frozen=True)
class _Combs:
    """Along one axis at one lag, per candidate period: the best comb's statistic, offset and line count."""

    periods: np.ndarray
    best: np.ndarray  # -inf where the period has no comb of enough lines
    offsets: np.ndarray
    lines: np.ndarray
    tried: int


def _combs(u: np.ndarray, periods: Sequence[int], offset: int | None = None) -> _Combs:
    """The best comb of every period (at the given offset only, where one is given)."""
    best = np.full(len(periods), -np.inf)
    offsets = np.zeros(len(periods), dtype=np.int64)
    lines = np.zeros(len(periods), dtype=np.int64)
    tried = 0
    for i, p in enumerate(periods):
        sums, counts = comb_statistic(u, p)
        valid = counts >= (1 if offset is not None else MIN_LINES)
        if offset is not None:
            valid &= np.arange(p) == offset % p
        tried += int(valid.sum())
        if valid.any():
            o = int(np.argmax(np.where(valid, sums, -np.inf)))
            best[i], offsets[i], lines[i] = sums[o], o, counts[o]
    return _Combs(np.asarray(periods), best, offsets, lines, tried)


def _null(u: np.ndarray, periods: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Per shuffle of the lines (the grid broken, every line kept), the best comb of every period."""
    known = np.flatnonzero(np.isfinite(u))
    rounds = _permutations(len(u), len(periods))
    result = np.empty((rounds, len(periods)))
    for r in range(rounds):
        shuffled = u.copy()
        shuffled[known] = u[rng.permutation(known)]
        result[r] = _combs(shuffled, periods).best
    return result


def _permutations(lines: int, periods: int) -> int:
    """Shuffles per axis and lag: :data:`PERMUTATIONS`, fewer on very long axes (bounded cost, at least 20)."""
    return int(max(20, min(PERMUTATIONS, 4e8 // max(1, lines * periods))))


def _gumbel_tail(observed: float, maxima: np.ndarray) -> float:
    """P(max ≥ ``observed``) under a Gumbel distribution fitted (by moments) to the null ``maxima``."""
    values = maxima[np.isfinite(maxima)]
    if not np.isfinite(observed):
        return 1.0
    if len(values) < 2 or not values.std() > 0:
        return 1.0 if len(values) and observed <= values.max() else 0.0
    scale = float(values.std(ddof=1)) * math.sqrt(6) / math.pi
    location = float(values.mean()) - 0.5772156649 * scale
    return float(-math.expm1(-math.exp(-(observed - location) / scale)))


def _score(lines: _AxisLines, period: int, offset: int) -> float:
    """Mean step at the comb's lines over the mean step of their reference lines."""
    comb = np.arange(offset - 1, lines.steps.shape[0], period)
    comb = comb[comb >= 0]
    seam = float(np.nanmean(lines.steps[comb]))
    reference = float(np.nanmean(lines.steps[comb] - lines.excess[comb]))
    return seam / reference if reference > 0 else (1.0 if seam == 0 else math.inf)


@dataclass(frozen=True)
class _AxisTest:
    """One axis at one lag: its lines, their combs and (searching) the shuffles' combs."""

    lines: _AxisLines
    combs: _Combs
    null: np.ndarray | None


def axis_result(tests: list[_AxisTest], known: bool) -> AxisGrid:
    """The lag whose best comb is most significant, its p-value corrected for the lags tried."""
    found = []
    for test in tests:
        combs = test.combs
        if test.lines.standardized is None or combs.tried == 0 or not np.isfinite(combs.best).any():
            continue
        i = int(np.argmax(combs.best))
        value = float(combs.best[i])
        p_value = (normal_tail(value) if known or test.null is None
                   else _gumbel_tail(value, test.null.max(axis=1)))
        period, offset = int(combs.periods[i]), int(combs.offsets[i])
        found.append(AxisGrid(period, offset, value, p_value, combs.tried, int(combs.lines[i]),
                              test.lines.small, score=_score(test.lines, period, offset),
                              searched=(int(combs.periods[0]), int(combs.periods[-1]))))
    if not found:
        small = tests[0].lines.small if tests else 1
        return AxisGrid(None, None, None, None, 0, 0, small)
    best = min(found, key=lambda g: (g.p_value, -(g.z or 0.0)))
    return replace(best, p_value=min(1.0, best.p_value * len(found)))  # type: ignore[operator]


def _joint(axes: list[list[_AxisTest]], known: bool) -> tuple[float, int | None, int | None]:
    """One grid over every axis: (p-value, period, lag). Square tiles, the usual case, show on every axis.

    Searching: per lag and common period, the axes' best combs are summed over the root of their number, and the
    best such sum is compared with the same sum over the shuffles (each axis shuffled on its own). With the grid
    given: the axes' comb statistics summed likewise, a normal tail (period None)."""
    results: list[tuple[float, int | None, int]] = []
    for lag in range(len(axes[0])):
        tests = [axis[lag] for axis in axes]
        if any(t.lines.standardized is None or not np.isfinite(t.combs.best).any() for t in tests):
            continue
        if known:
            total = sum(float(t.combs.best[0]) for t in tests) / math.sqrt(len(tests))
            results.append((normal_tail(total), None, lag))
            continue
        periods = sorted(set.intersection(*(set(t.combs.periods.tolist()) for t in tests)))
        if not periods or any(t.null is None for t in tests):
            continue
        columns = [np.searchsorted(t.combs.periods, periods) for t in tests]
        totals = np.sum([t.combs.best[c] for t, c in zip(tests, columns)], axis=0) / math.sqrt(len(tests))
        rounds = min(len(t.null) for t in tests if t.null is not None)
        null = np.sum([t.null[:rounds][:, c] for t, c in zip(tests, columns) if t.null is not None], axis=0)
        i = int(np.argmax(totals))
        p_value = _gumbel_tail(float(totals[i]), np.max(null / math.sqrt(len(tests)), axis=1))
        results.append((p_value, int(periods[i]), lag))
    if not results:
        return 1.0, None, None
    p_value, period, lag = min(results, key=lambda r: r[0])
    return min(1.0, p_value * len(results)), period, lag


def candidate_periods(lines: int) -> range:
    """Candidate tile periods along an axis of ``lines`` + 1 voxels: at least :data:`MIN_LINES` seams each."""
    return range(MIN_PERIOD, min(MAX_PERIOD, (lines + 1) // MIN_LINES) + 1)


def axis_tests(lags: list[_AxisLines], periods: Sequence[int], offset: int | None, search: bool,
           rng: np.random.Generator) -> list[_AxisTest]:
    return [_AxisTest(lines, _combs(lines.standardized, periods, offset) if lines.standardized is not None
                      else _Combs(np.asarray(periods), np.full(len(periods), -np.inf), np.zeros(len(periods), int),
                                  np.zeros(len(periods), int), 0),
                      _null(lines.standardized, periods, rng) if search and lines.standardized is not None
                      else None)
            for lines in lags]




def with_joint(axes: list[AxisGrid], tests: list[list[_AxisTest]], known: bool) -> list[AxisGrid]:
    """Axes that one grid over all of them explains (at half the false-alarm rate), marked detected."""
    p_value, period, lag = _joint(tests, known)
    if p_value >= FALSE_ALARM_RATE / 2 or lag is None:
        return axes
    result = []
    for axis, axis_tests in zip(axes, tests):
        combs = axis_tests[lag].combs
        i = 0 if period is None else int(np.searchsorted(combs.periods, period))
        if axis.detected or not np.isfinite(combs.best[i]):
            result.append(axis)
            continue
        p, o = int(combs.periods[i]), int(combs.offsets[i])
        result.append(AxisGrid(p, o, float(combs.best[i]), p_value, axis.candidates, int(combs.lines[i]),
                               axis.small_period, True, _score(axis_tests[lag].lines, p, o), axis.searched))
    return result
