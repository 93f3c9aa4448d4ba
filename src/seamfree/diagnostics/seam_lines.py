"""Line statistics of a prediction: how big a step every line (plane) makes, segment by segment, read block by
block; each line ranked against its neighbours; combs of lines. The pieces :mod:`seamfree.diagnostics.seam_grid`
searches a tile grid with (see its docstring for the method)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BORDER", "CLIP", "FALSE_ALARM_RATE", "LAGS", "MIN_LINES", "MIN_PERIOD", "MIN_SEGMENTS", "SEGMENT",
           "LineSteps", "baseline", "comb_statistic", "line_steps", "line_z", "normal_quantile", "normal_tail",
           "segment_sizes", "small_period", "standardized"]

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
        steps[lag].append(per_line.reshape(per_line.shape[0], int(np.prod(per_line.shape[1:]))))
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


def baseline(steps: np.ndarray, small_period: int) -> np.ndarray:
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


def standardized(z: np.ndarray) -> np.ndarray | None:
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
    best, best_z = 1, normal_quantile(FALSE_ALARM_RATE / sum(tried))
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


def normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_quantile(tail: float) -> float:
    """The z whose one-sided tail is ``tail`` (bisection on :func:`_normal_tail`; no scipy needed)."""
    low, high = -10.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if normal_tail(middle) > tail else (low, middle)
    return (low + high) / 2


