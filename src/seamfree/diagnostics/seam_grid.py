"""Seams without the model: the tile grid a prediction was stitched on, found from the prediction alone.

A prediction stitched from tiles that disagree has a *step* along every seam: the two tiles' values differ by
an offset that keeps its sign along the shared boundary. Per axis, every line between two neighbouring voxels
(a plane in 3D) is measured segment by segment (:func:`line_steps`)::

    step(line k, segment s) = | mean over s of (P[k + 1] − P[k]) |     (per channel, then averaged)

and compared with the median of the same segment on the nearest lines of the same phase modulo the prediction's
own small period ``q`` (a pooling network's faint stride pattern; 1 for most predictions), three on each side.
The segments' excesses give each line a t-statistic, standardized by the median and spread of all lines' (so
that the prediction's own texture sets the scale) and clipped at :data:`CLIP` (one bright edge that happens to
run along a line cannot make a grid). A grid of period ``p`` and offset ``o`` along an axis is the comb of lines
``o − 1 + j·p``; its statistic is the sum of its lines' clipped values over the square root of their number
(about a standard normal variable where there is no grid). Every period from :data:`MIN_PERIOD` to a third of
the axis and every offset is tried, and the best comb is called a grid when its one-sided p-value, times the
number of combs tried (Bonferroni), is below :data:`FALSE_ALARM_RATE`. Where the grid is known (``period`` and
``offset`` given, or recorded by seamfree in its output) only that comb is tested, at the same rate.

Instance labels are measured the same way with ``step`` = the share of the segment where two different objects
touch across the line; along a detected grid, the objects cut there are counted.

The false-alarm rate and the sensitivity were measured on a calibration set and validated on a separate one
(:mod:`seamfree.diagnostics.seam_cases`, ``benchmarks/seam_calibration.py``, ``docs/diagnose.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from seamfree.errors import ConfigError, ShapeError

__all__ = ["CLIP", "FALSE_ALARM_RATE", "MIN_LINES", "MIN_PERIOD", "AxisGrid", "SeamGrid", "comb_statistic",
           "find_seams", "line_steps", "line_z", "recorded_grid"]

# voxels per segment along a line (per orthogonal axis); larger for planes that would have too many segments
SEGMENT = 16
# the most segments one line (plane) is cut into: bounds the statistics' memory for any volume
MAX_SEGMENTS = 4096
# same-phase lines on each side of a line that form its baseline
REFERENCE_LINES = 3
# candidate periods of a prediction's own texture (a pooling network's stride); the smallest that explains it wins
SMALL_PERIODS = (1, 2, 4, 8, 16)
# the smallest tile core looked for, and the fewest seam lines a grid must have along an axis
MIN_PERIOD = 24
MIN_LINES = 3
# the largest tile core looked for (bounds the search's cost on very long axes)
MAX_PERIOD = 8192
# at most this many standard deviations per line enter a comb: one odd line cannot make a grid
CLIP = 4.0
# the stated false-alarm rate of a detection (per prediction, all axes and candidate grids together)
FALSE_ALARM_RATE = 0.01
# lines this close to the image's faces are left out of every comb (padding effects of the whole image)
BORDER = 4
# shuffles of an axis's lines that give the null distribution of its best comb
PERMUTATIONS = 100
# voxels between the two sides of a step: 1 finds crop-stitched seams; 8 finds blended ones, whose step is
# spread over the overlap (MONAI's Gaussian sliding window); the better p-value counts, doubled
LAGS = (1, 8)
# the fewest segments a line needs for its t-statistic
MIN_SEGMENTS = 4
# voxels read at once (per block), for predictions of any size
BLOCK_VOXELS = 1 << 24

Kind = Literal["auto", "values", "labels"]


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
class SeamGrid:
    """Whether a prediction was stitched from tiles that disagree, and on which grid.

    Attributes
    ----------
    detected : bool or "cannot tell"
        A grid of steps is present (``True``), absent at the stated false-alarm rate (``False``), or the
        prediction has too few possible grid lines or too little signal to decide (``"cannot tell"``).
    axes : list of AxisGrid
        Per spatial axis (z, y, x order).
    false_alarm_rate : float
        The rate at which a prediction without seams is called ``detected`` (stated; measured on the
        validation set in ``docs/diagnose.md``).
    known_grid : bool
        The grid was given (or recorded by seamfree), only its lines were tested.
    kind : {"values", "labels"}
        Probabilities/logits/masks, or instance labels.
    reason : str
        Why "cannot tell", or which axes carry the grid.
    seam_map : ndarray or None
        Per segment cell, the largest step excess at a detected seam crossing it (0 elsewhere); shape: the image
        in segments. Not serialized.
    segment : tuple of int
        Voxels per segment cell along each axis (the map's resolution).
    objects, objects_cut : int or None
        Instance labels: objects in the image, and those touching another object across a detected seam.
    """

    detected: bool | str
    axes: list[AxisGrid]
    false_alarm_rate: float
    known_grid: bool
    kind: str
    reason: str
    seam_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    segment: tuple[int, ...] = ()
    objects: int | None = None
    objects_cut: int | None = None

    @property
    def period(self) -> list[int | None]:
        """Per axis, the grid's period where that axis shows one (None elsewhere)."""
        return [a.period if a.detected else None for a in self.axes]

    @property
    def offset(self) -> list[int | None]:
        """Per axis, the first core start where that axis shows a grid (None elsewhere)."""
        return [a.offset if a.detected else None for a in self.axes]

    @property
    def z(self) -> float | None:
        known = [a.z for a in self.axes if a.z is not None]
        return max(known) if known else None

    @property
    def score(self) -> float | None:
        """The seam/reference step ratio of the strongest detected axis; at a known grid, of its strongest axis.

        None when a search found nothing: the best of thousands of combs is elevated by its selection alone, so
        its ratio says nothing about seams."""
        ranked = sorted((a for a in self.axes if a.score is not None and (a.detected or self.known_grid)),
                        key=lambda a: (a.detected, a.z or 0.0))
        return ranked[-1].score if ranked else None

    @property
    def summary(self) -> str:
        """One phrase: "tile grid detected: period (160, 160), offset (123, 107), z 9.3 ..."."""
        if self.detected == "cannot tell":
            return f"cannot tell: {self.reason}"
        if not self.detected:
            z = f"largest z {self.z:.1f}, " if self.z is not None else ""
            ranges = sorted({a.searched for a in self.axes if a.searched is not None})
            searched = "" if self.known_grid or not ranges else " among periods " + ", ".join(
                f"{low}–{high}" for low, high in ranges)
            return (f"no tile grid detected{searched} ({z}false-alarm rate {self.false_alarm_rate:g}"
                    + (", at the given grid)" if self.known_grid else ")"))
        axes = ", ".join("-" if p is None else str(p) for p in self.period)
        offsets = ", ".join("-" if o is None else str(o) for o in self.offset)
        cut = (f"; {self.objects_cut} of {self.objects} objects touch another across a seam"
               if self.objects_cut is not None else "")
        score = f", score {self.score:.2f}" if self.score is not None else ""
        return f"tile grid detected: period ({axes}), offset ({offsets}), z {self.z:.1f}{score}{cut}"

    def to_dict(self) -> dict[str, Any]:
        return {"detected": self.detected, "period": self.period, "offset": self.offset, "score": self.score,
                "z": self.z, "false_alarm_rate": self.false_alarm_rate, "known_grid": self.known_grid,
                "kind": self.kind, "reason": self.reason, "axes": [a.to_dict() for a in self.axes],
                "segment": list(self.segment), "objects": self.objects, "objects_cut": self.objects_cut,
                "objects_cut_share": (self.objects_cut / self.objects if self.objects and self.objects_cut is not None
                                      else None),
                "summary": self.summary}


@dataclass(frozen=True)
class LineSteps:
    """Per lag and axis, the step of every line in every segment: ``steps[lag][axis]`` has shape
    ``(lines, segments)``; line ``k`` of lag ``L`` spans voxels ``k .. k + L``."""

    steps: dict[int, list[np.ndarray]]
    segment: tuple[int, ...]
    shape: tuple[int, ...]
    objects: set[int] | None = None


def segment_sizes(shape: Sequence[int]) -> tuple[int, ...]:
    """Voxels per segment along each axis: :data:`SEGMENT`, larger where a plane would exceed the cap."""
    dims = len(shape)
    per_axis = MAX_SEGMENTS ** (1.0 / max(dims - 1, 1))
    return tuple(max(SEGMENT, math.ceil(int(n) / per_axis)) for n in shape)


def _blocks(shape: tuple[int, ...], segment: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Windows of about :data:`BLOCK_VOXELS` voxels, aligned to whole segments along every axis."""
    side = BLOCK_VOXELS ** (1.0 / len(shape))
    extents = [min(n, max(s, int(side // s) * s)) for n, s in zip(shape, segment)]
    starts = np.stack(np.meshgrid(*[np.arange(0, n, e) for n, e in zip(shape, extents)], indexing="ij"), -1)
    return [tuple(slice(int(a), min(int(a) + e, n)) for a, e, n in zip(start, extents, shape))
            for start in starts.reshape(-1, len(shape))]


def _segment_sums(values: np.ndarray, starts: Sequence[int], segment: Sequence[int]) -> np.ndarray:
    """Sums of ``values`` (..., *plane) over segment cells; plane axes start at the global ``starts``."""
    result = values
    lead = values.ndim - len(starts)
    for i, (start, size) in enumerate(zip(starts, segment)):
        axis = lead + i
        n = result.shape[axis]
        first = (-start) % size  # the block is segment-aligned: 0
        edges = np.unique(np.concatenate([[0], np.arange(first, n, size)]))
        result = np.add.reduceat(result, edges, axis=axis)
    return result


def line_steps(read: Any, shape: Sequence[int], channels: int, *, kind: str = "values") -> LineSteps:
    """Return the step of every line in every segment, per axis, reading the prediction block by block.

    Parameters
    ----------
    read : callable
        ``read(window)`` gives the region ``window`` (spatial slices) as ``(C, *window)``.
    shape : tuple of int
        Spatial shape.
    channels : int
        ``C``.
    kind : {"values", "labels"}
        Probabilities/logits/masks (signed steps), or instance labels (share of the segment where two objects
        touch across the line).
    """
    shape = tuple(int(n) for n in shape)
    dims = len(shape)
    segment = segment_sizes(shape)
    cells = [math.ceil(n / s) for n, s in zip(shape, segment)]
    lags = (1,) if kind == "labels" else LAGS
    channels = 1 if kind == "labels" else channels
    sums = {(lag, a): np.zeros((channels, max(shape[a] - lag, 0), *[cells[b] for b in range(dims) if b != a]))
            for lag in lags for a in range(dims)}
    sizes = [np.minimum(s, n - np.arange(c) * s) for n, s, c in zip(shape, segment, cells)]
    counts = [_outer([sizes[b] for b in range(dims) if b != a]) for a in range(dims)]
    objects: set[int] | None = set() if kind == "labels" else None
    for window in _blocks(shape, segment):
        grown = tuple(slice(w.start, min(w.stop + max(lags), n)) for w, n in zip(window, shape))
        data = read(grown)
        own = tuple(slice(0, w.stop - w.start) for w in window)
        if objects is not None:
            objects.update(int(v) for v in np.unique(data[(slice(None), *own)]) if v != 0)
        for lag, a in sums:
            stop = min(window[a].stop, shape[a] - lag)
            if stop <= window[a].start:
                continue
            index = list(own)
            index[a] = slice(0, stop - window[a].start + lag)
            jumps = _jumps(data[(slice(None), *index)], a + 1, kind, lag)
            plane_starts = [window[b].start for b in range(dims) if b != a]
            plane_segments = [segment[b] for b in range(dims) if b != a]
            block_sums = _segment_sums(jumps, plane_starts, plane_segments)
            target = tuple(slice(s // g, s // g + n) for s, g, n in
                           zip(plane_starts, plane_segments, block_sums.shape[2:]))
            sums[(lag, a)][(slice(None), slice(window[a].start, stop), *target)] += block_sums
    steps: dict[int, list[np.ndarray]] = {lag: [] for lag in lags}
    for (lag, a), total in sums.items():
        mean = total / np.maximum(counts[a], 1)[np.newaxis, np.newaxis]
        per_line = np.abs(mean).mean(axis=0) if kind == "values" else mean[0]
        steps[lag].append(per_line.reshape(per_line.shape[0], -1))
    return LineSteps(steps, segment, shape, objects)


def _outer(factors: list[np.ndarray]) -> np.ndarray:
    result = np.ones(())
    for factor in factors:
        result = np.multiply.outer(result, factor.astype(np.float64))
    return result


def _jumps(region: np.ndarray, axis: int, kind: str, lag: int = 1) -> np.ndarray:
    """Signed differences ``lag`` voxels apart along ``axis`` (values), or where two objects touch across it
    (labels, lag 1)."""
    if kind == "labels":
        labels = region[0]
        ahead = np.take(labels, np.arange(1, labels.shape[axis - 1]), axis=axis - 1)
        behind = np.take(labels, np.arange(0, labels.shape[axis - 1] - 1), axis=axis - 1)
        touch = (ahead != behind) & (ahead != 0) & (behind != 0)
        return np.moveaxis(touch.astype(np.float64)[np.newaxis], axis, 1)
    values = region.astype(np.float64)
    n = values.shape[axis]
    ahead = np.take(values, np.arange(lag, n), axis=axis)
    return np.moveaxis(ahead - np.take(values, np.arange(0, n - lag), axis=axis), axis, 1)


def _references(lines: int, small_period: int) -> np.ndarray:
    """Per line, the indices of its same-phase reference lines (-1 where outside the axis)."""
    offsets = np.array([j * small_period for j in range(-REFERENCE_LINES, REFERENCE_LINES + 1) if j != 0])
    indices = np.arange(lines)[:, np.newaxis] + offsets[np.newaxis]
    return np.where((indices >= 0) & (indices < lines), indices, -1)


def _baseline(steps: np.ndarray, small_period: int) -> np.ndarray:
    """Per line and segment, the median step of the reference lines (NaN where a line has fewer than two)."""
    refs = _references(steps.shape[0], small_period)
    gathered = np.where(refs[..., np.newaxis] >= 0, steps[np.maximum(refs, 0)], np.nan)  # (lines, refs, seg)
    enough = np.sum(refs >= 0, axis=1) >= 2
    with np.errstate(all="ignore"):
        baseline = np.nanmedian(np.where(enough[:, None, None], gathered, 0.0), axis=1)
    baseline[~enough] = np.nan
    return baseline


def line_z(steps: np.ndarray, small: int) -> np.ndarray:
    """Per line: how far its steps rank above those of its reference lines, segment by segment (a rank-sum z).

    Each segment's step is ranked among the same segment's steps on the line and its reference lines; without a
    seam the line's rank is uniform whatever the texture's strength in that segment, so that a seam through
    empty background (where tile-wise normalization leaves its steps) counts as much as one through objects."""
    lines, segments = steps.shape
    z = np.full(lines, np.nan)
    if segments < MIN_SEGMENTS:
        return z
    refs = _references(lines, small)
    chunk = max(1, (1 << 22) // max(1, refs.shape[1] * segments))
    for first in range(0, lines, chunk):
        rows = slice(first, min(first + chunk, lines))
        own, valid = steps[rows][:, np.newaxis], (refs[rows] >= 0)[..., np.newaxis]
        gathered = steps[np.maximum(refs[rows], 0)]
        below = np.sum((gathered < own) & valid, axis=1)
        equal = np.sum((gathered == own) & valid, axis=1)
        n = valid[..., 0].sum(axis=1) + 1
        centred = below + 0.5 * equal + 1 - (n[:, np.newaxis] + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            values = centred.sum(axis=1) / np.sqrt((n * n - 1) / 12 * segments)
        z[rows] = np.where(n >= 3, values, np.nan)
    return z


def _standardized(z: np.ndarray) -> np.ndarray | None:
    """Lines' z centred and scaled by their median and spread, clipped at ±:data:`CLIP` (None: no spread)."""
    known = z[np.isfinite(z)]
    if len(known) < 2 * MIN_LINES:
        return None
    centre = float(np.median(known))
    spread = 1.4826 * float(np.median(np.abs(known - centre)))
    if not spread > 0:
        spread = float(np.std(known))
    if not spread > 0:
        return None
    with np.errstate(invalid="ignore"):
        return np.clip((z - centre) / spread, -CLIP, CLIP)


def small_period(standardized: np.ndarray) -> int:
    """The prediction's own texture period along an axis (a pooling network's stride), or 1.

    A texture raises *every* line of one phase modulo ``q``, a tile grid only some: a period of
    :data:`SMALL_PERIODS` is a texture's when most lines of one of its phases rank above the rest (a sign test,
    Bonferroni over the periods and phases tried); the most significant one wins."""
    tried = [q for q in SMALL_PERIODS if q > 1 and 2 * MIN_LINES * q <= len(standardized)]
    if not tried:
        return 1
    best, best_z = 1, _normal_quantile(FALSE_ALARM_RATE / sum(tried))
    signs = np.where(np.isnan(standardized), np.nan, np.sign(standardized))
    for q in tried:
        sums, counts = comb_statistic(signs, q)  # sum of signs over the root of their number: the sign test's z
        z = float(np.max(np.where(counts >= 2 * MIN_LINES, sums, -np.inf)))
        if z > best_z:
            best, best_z = q, z
    return best


def comb_statistic(values: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Per offset ``o`` in ``[0, period)``: the sum of ``values`` at the lines before ``o + j·period`` over the
    square root of their number, and that number. ``values[k]`` belongs to the line between voxels k and k + 1."""
    boundaries = np.full(math.ceil((len(values) + 1) / period) * period, np.nan)
    boundaries[1:len(values) + 1] = values  # boundary b = a core starts at b: its line is b - 1
    # the lines nearest the image's faces carry its padding, not tiles
    boundaries[:BORDER + 1] = np.nan
    boundaries[max(0, len(values) + 1 - BORDER):] = np.nan
    table = boundaries.reshape(-1, period)
    count = np.sum(~np.isnan(table), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(table, axis=0) / np.sqrt(count), count


def _normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _normal_quantile(tail: float) -> float:
    """The z whose one-sided tail is ``tail`` (bisection on :func:`_normal_tail`; no scipy needed)."""
    low, high = -10.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _normal_tail(middle) > tail else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class _AxisLines:
    """One axis's lines: their steps, standardized z (None: untestable), texture period and excess steps."""

    steps: np.ndarray
    standardized: np.ndarray | None
    small: int
    excess: np.ndarray


def _axis_lines(steps: dict[int, np.ndarray]) -> list[_AxisLines]:
    """One axis's lines at every lag, each aligned on the lag-1 lines (a lag-L line sits at its middle)."""
    first = _standardized(line_z(steps[1], 1))
    small = 1 if first is None else small_period(first)
    result = []
    for lag, lag_steps in steps.items():
        spacing = small * math.ceil(lag / small)  # references beyond the line's own span
        standardized = first if spacing == 1 else _standardized(line_z(lag_steps, spacing))
        excess = lag_steps - _baseline(lag_steps, spacing)
        lines = steps[1].shape[0]
        result.append(_AxisLines(_aligned(lag_steps, lag, lines), None if standardized is None else
                                 _aligned(standardized, lag, lines), small, _aligned(excess, lag, lines)))
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


def _axis_result(tests: list[_AxisTest], known: bool) -> AxisGrid:
    """The lag whose best comb is most significant, its p-value corrected for the lags tried."""
    found = []
    for test in tests:
        combs = test.combs
        if test.lines.standardized is None or combs.tried == 0 or not np.isfinite(combs.best).any():
            continue
        i = int(np.argmax(combs.best))
        value = float(combs.best[i])
        p_value = (_normal_tail(value) if known or test.null is None
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
            results.append((_normal_tail(total), None, lag))
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


def _periods(lines: int) -> range:
    """Candidate tile periods along an axis of ``lines`` + 1 voxels: at least :data:`MIN_LINES` seams each."""
    return range(MIN_PERIOD, min(MAX_PERIOD, (lines + 1) // MIN_LINES) + 1)


def _tests(lags: list[_AxisLines], periods: Sequence[int], offset: int | None, search: bool,
           rng: np.random.Generator) -> list[_AxisTest]:
    return [_AxisTest(lines, _combs(lines.standardized, periods, offset) if lines.standardized is not None
                      else _Combs(np.asarray(periods), np.full(len(periods), -np.inf), np.zeros(len(periods), int),
                                  np.zeros(len(periods), int), 0),
                      _null(lines.standardized, periods, rng) if search and lines.standardized is not None
                      else None)
            for lines in lags]


def find_seams(prediction: Any, *, period: int | Sequence[int] | None = None,
               offset: int | Sequence[int] | None = None, kind: Kind = "auto",
               spatial_dims: int | None = None) -> SeamGrid:
    """Return whether ``prediction`` was stitched from tiles that disagree, and the tile grid.

    Parameters
    ----------
    prediction : ndarray, ImageSource or path
        ``(C, *spatial)`` or spatial-only probabilities, logits, masks or instance labels; a path is opened
        with :func:`seamfree.io.readers.open_image` and read block by block (any size).
    period, offset : int or sequence of int, optional
        The grid, when known (per axis, or one for all): only its lines are tested.
    kind : {"auto", "values", "labels"}
        "auto": instance labels for integer predictions wider than 8 bits or an OME-Zarr label image, else values.
    spatial_dims : int, optional
        2 or 3, where a 3-axis array could be ``(C, Y, X)`` or ``(Z, Y, X)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.normal(size=(256, 256)).cumsum(0).cumsum(1) * 1e-3
    >>> image[:, 100:] += 0.5; image[:, 180:] -= 0.3; image[:, 20:] += 0.2
    >>> find_seams(image + rng.normal(0, 0.05, image.shape), period=(80, 80), offset=(20, 20)).detected
    True
    """
    from seamfree.io.readers import open_image

    source = _open(prediction, spatial_dims, open_image)
    shape = tuple(int(n) for n in source.spatial_shape)
    dims = len(shape)
    periods = _per_axis(period, dims, "period")
    if periods is None and offset is not None:
        raise ConfigError(f"offset {offset} was given without a period; pass both (e.g. period=256, offset=0)")
    offsets = _per_axis(offset, dims, "offset") or (0,) * dims
    if periods is not None and any(p < 2 for p in periods):
        raise ConfigError(f"period {period} must be at least 2 voxels per axis")
    resolved = _kind(kind, source)
    measured = line_steps(source.read, shape, int(source.shape[0]), kind=resolved)
    lines = [_axis_lines({lag: steps[a] for lag, steps in measured.steps.items()}) for a in range(dims)]
    known = periods is not None
    rng = np.random.default_rng(0)  # the shuffles are part of the answer: the same prediction, the same verdict
    candidates = ([[p] for p in periods] if periods is not None
                  else [list(_periods(axis[0].steps.shape[0])) for axis in lines])
    tests = [_tests(axis, ps, offsets[a] if known else None, not known, rng)
             for a, (axis, ps) in enumerate(zip(lines, candidates))]
    axes = [_axis_result(t, known) for t in tests]
    tested = [a for a in axes if a.p_value is not None]
    objects = None if measured.objects is None else len(measured.objects)
    if not tested:
        return SeamGrid("cannot tell", axes, FALSE_ALARM_RATE, known, resolved,
                        _why_untestable(shape, measured), segment=measured.segment, objects=objects)
    # one false-alarm rate for the prediction: half for the axes alone, half for one grid over all of them
    joint = len(tested) == dims >= 2
    level = FALSE_ALARM_RATE / (2 * len(tested)) if joint else FALSE_ALARM_RATE / len(tested)
    axes = [_with_detection(a, level) for a in axes]
    if joint:
        axes = _with_joint(axes, tests, known)
    found = sorted({a.period for a in axes if a.detected and a.period is not None})
    if found and not known:
        # an axis whose own search fell short is searched at the periods found on the others (non-square tiles)
        axes = [a if a.detected else _with_detection(_axis_result(_tests(axis, found, None, True, rng), False), level)
                for a, axis in zip(axes, lines)]
    detected = any(a.detected for a in axes)
    seam_map = _seam_map(axes, [axis[0].excess for axis in lines], measured) if detected else None
    cut = _objects_cut(source, axes) if detected and resolved == "labels" else None
    reason = ("a grid along axis " + ", ".join(str(i) for i, a in enumerate(axes) if a.detected) if detected
              else "no comb of lines stands out of the rest")
    return SeamGrid(detected, axes, FALSE_ALARM_RATE, known, resolved, reason, seam_map,
                    measured.segment, objects, cut)


def _with_joint(axes: list[AxisGrid], tests: list[list[_AxisTest]], known: bool) -> list[AxisGrid]:
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


def _with_detection(axis: AxisGrid, level: float) -> AxisGrid:
    if axis.p_value is None:
        return axis
    return replace(axis, detected=axis.p_value < level)


def _why_untestable(shape: tuple[int, ...], measured: LineSteps) -> str:
    if all(n < MIN_PERIOD * MIN_LINES for n in shape):
        return (f"the image {shape} is too small to hold {MIN_LINES} grid lines of period {MIN_PERIOD} or more "
                f"along any axis (needs {MIN_PERIOD * MIN_LINES} voxels)")
    if all(s.shape[1] < MIN_SEGMENTS for s in measured.steps[1]):
        return (f"the image {shape} is too thin: a grid line needs at least {MIN_SEGMENTS} segments of "
                f"{SEGMENT} voxels")
    return "the prediction is (nearly) constant: there is too little signal to see steps in"


def _seam_map(axes: list[AxisGrid], excesses: list[np.ndarray | None], measured: LineSteps) -> np.ndarray:
    """Per segment cell, the largest excess step at a detected seam crossing it."""
    shape, segment = measured.shape, measured.segment
    cells = [math.ceil(n / s) for n, s in zip(shape, segment)]
    seam_map = np.zeros(cells, np.float32)
    for a, (grid, excess) in enumerate(zip(axes, excesses)):
        if not grid.detected or excess is None or grid.period is None or grid.offset is None:
            continue
        plane = [cells[b] for b in range(len(shape)) if b != a]
        for line in range(grid.offset - 1, excess.shape[0], grid.period):
            if line < 0:
                continue
            values = np.nan_to_num(np.maximum(excess[line], 0.0)).reshape(plane).astype(np.float32)
            target = np.moveaxis(seam_map, a, 0)
            target[(line + 1) // segment[a]] = np.maximum(target[(line + 1) // segment[a]], values)
    return seam_map


def _objects_cut(source: Any, axes: list[AxisGrid]) -> int:
    """Objects that touch another object across a detected seam line (cut there, or merged along it)."""
    shape = tuple(int(n) for n in source.spatial_shape)
    cut: set[int] = set()
    for a, grid in enumerate(axes):
        if not grid.detected or grid.period is None or grid.offset is None:
            continue
        for boundary in range(grid.offset or grid.period, shape[a], grid.period):
            if boundary <= 0:
                continue
            window = [slice(0, n) for n in shape]
            window[a] = slice(boundary - 1, boundary + 1)
            pair = np.moveaxis(source.read(tuple(window))[0], a, 0)
            touch = (pair[0] != pair[1]) & (pair[0] != 0) & (pair[1] != 0)
            cut.update(int(v) for v in np.unique(pair[0][touch]))
            cut.update(int(v) for v in np.unique(pair[1][touch]))
    return len(cut)


def _per_axis(value: int | Sequence[int] | None, dims: int, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    values = (int(value),) * dims if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(values) != dims:
        raise ConfigError(f"{name} needs one value or {dims} (one per spatial axis), got {value}")
    return values


def _open(prediction: Any, spatial_dims: int | None, open_image: Any) -> Any:
    if isinstance(prediction, np.ndarray):
        if spatial_dims is None and prediction.ndim == 3 and prediction.shape[0] != 1 and prediction.shape[0] > 4:
            spatial_dims = 3  # more than 4 "channels": a volume
        if spatial_dims is None and prediction.ndim == 3 and prediction.shape[0] == 1:
            spatial_dims = 2  # one slice of a volume is an image: a channel axis
        if spatial_dims is None and prediction.ndim == 3:
            raise ShapeError(f"an array of shape {prediction.shape} is (C, Y, X) or (Z, Y, X); pass "
                             "spatial_dims=2 or spatial_dims=3 (CLI --spatial-dims)")
        dims = spatial_dims or {2: 2, 4: 3}.get(prediction.ndim)
        if dims is not None and prediction.ndim == dims:
            prediction = prediction[np.newaxis]
        return open_image(prediction, spatial_dims=dims)
    return open_image(prediction, spatial_dims=spatial_dims)


def _kind(kind: str, source: Any) -> str:
    if kind not in ("auto", "values", "labels"):
        raise ConfigError(f"kind must be 'auto', 'values' or 'labels', got {kind!r}")
    if kind != "auto":
        return kind
    dtype = np.dtype(source.dtype)
    if np.issubdtype(dtype, np.integer) and dtype.itemsize > 1 and int(source.shape[0]) == 1:
        return "labels"
    return "labels" if _is_label_image(source) else "values"


def _is_label_image(source: Any) -> bool:
    """An OME-Zarr image-label (its group's attributes say so)."""
    import json
    from pathlib import Path

    path = getattr(source, "path", None)
    if not isinstance(path, str) or not Path(path).is_dir():
        return False
    for name in ("zarr.json", ".zattrs"):
        candidate = Path(path) / name
        if candidate.is_file():
            try:
                attrs = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", attrs)
            return "image-label" in attrs or "image-label" in attrs.get("ome", {})
    return False


def recorded_grid(prediction: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The (period, offset) seamfree recorded in an OME-Zarr it wrote with crop stitching, else (None, None)."""
    from pathlib import Path

    from seamfree.io.zarr_output import seamfree_attrs

    if not isinstance(prediction, str | Path) or "://" in str(prediction) or not Path(prediction).is_dir():
        return None, None
    fingerprint = (seamfree_attrs(Path(prediction)) or {}).get("fingerprint") or {}
    core = (fingerprint.get("grid") or {}).get("core")
    settings = fingerprint.get("settings") or {}
    if not isinstance(core, list) or settings.get("stitching", "crop") != "crop":
        return None, None
    shift = settings.get("grid_offset") or 0
    shifts = [int(shift)] * len(core) if isinstance(shift, int | float) else [int(s) for s in shift]
    return tuple(int(c) for c in core), tuple(s % int(c) for s, c in zip(shifts, core))
