"""Seam score: are the core boundaries of a stitched prediction visible? A calibrated, paired statistic.

What a tile-wise normalization leaves at a seam is a *step*: the two tiles' predictions differ by an offset that
keeps its sign along the shared boundary. The statistic measures that step, segment by segment along every seam
(segments of :data:`SEGMENT` voxels), and compares it with the same measure on the nearest lines of the same
stride phase that are not seams (up to :data:`REFERENCE_LINES` on each side)::

    step(segment) = | mean over the segment of (P[b] − P[b − 1]) |        (per channel, then averaged)

Averaging the *signed* jump over a segment cancels the image's own texture, which has no preferred sign along a
line, while a tile offset adds up; taking the reference lines a few voxels away, at the same position modulo the
network stride, keeps the faint periodic pattern of a pooling network (and everything the image contributes) out
of the comparison. Over all segments:

- ``score`` = mean seam step / mean reference step (about 1: seamless), with a 95 % bootstrap interval over the
  segments (``ci``);
- ``z`` = mean segment excess (seam step − reference step) over its standard error, per axis (the largest is
  reported);
- ``detected`` when, along some axis, ``z > Z_DETECTED`` *and* the interval of that axis's ratio lies above
  ``MIN_RATIO`` (1.05): a significant, systematic discontinuity at the seams that the rest of the prediction does
  not have. An exactly tiled prediction has nothing systematic at its seams, so it is not flagged (``z`` then
  behaves like a standard normal variable).

Nearby lines are the baseline when the stitched prediction is all there is. They cannot tell a seam from the
image's own structure where that structure lies exactly on a seam: a brightness step between two halves of the
image at a multiple of the core, a membrane along a seam. ``diagnose`` therefore passes its second prediction,
made on a grid shifted by half a core (grid B), as ``reference``: each seam segment is compared with the same
segment of that prediction, in which it is the interior of a tile. What the image puts there is in both and
cancels; an exactly tiled model has no excess at all (score 1, z 0).

The seam map holds each segment's excess step where it stands out of the reference lines' own spread at that
segment (more than ``Z_SEGMENT`` of their standard deviations), 0 elsewhere: flat for a seamless model, the
visible seams for a tile-dependent one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seamfree.tiling.grid import TileGrid

__all__ = ["MIN_PAIRED", "MIN_RATIO", "REFERENCE_LINES", "SEGMENT", "Z_DETECTED", "Z_FAINT", "SeamScore",
           "seam_positions", "seam_score"]

# same-phase lines on each side of a seam that form its baseline
REFERENCE_LINES = 3
# voxels per segment along a seam (per orthogonal axis), the unit of the statistic
SEGMENT = 32
# z above which seams count as detected (with the ratio's interval above 1); a segment's own threshold in the map
Z_DETECTED = 4.0
# ... and the lower end of the ratio's interval above this: a seam 5 % stronger than the rest is the least called
# visible (a significant but tiny excess, which a long seam over regular texture can give by chance, is not)
MIN_RATIO = 1.05
Z_SEGMENT = 3.0
# z above which an undetected but systematic excess (interval above MIN_RATIO) is reported as faint seams
Z_FAINT = 2.0
# the least share of the seams a paired reference prediction must cover to be the baseline of an axis
MIN_PAIRED = 0.5
_BOOTSTRAP = 2000


@dataclass(frozen=True)
class SeamScore:
    """Seam score of a stitched prediction.

    Attributes
    ----------
    score : float or None
        Mean jump at the seams / mean jump at the same-phase reference lines; None when the grid has no seam.
    per_axis : list of float or None
        The same ratio for each spatial axis (None for an axis without seams).
    seam_jump, interior_jump : float
        The two means (interior: the reference lines).
    seams : int
        Number of seam lines (planes in 3D).
    map : ndarray, shape spatial
        Significant excess jump per seam segment, 0 elsewhere. Not serialized.
    z : float or None
        Mean segment excess over its standard error, along the axis where it is largest.
    ci : tuple of float or None
        95 % bootstrap interval of ``score`` over the segments.
    segments : int
        How many segments the statistic is made of.
    detected : bool or None
        Seams significantly visible along some axis: its ``z > Z_DETECTED`` and its ratio's interval above
        ``MIN_RATIO``; or that interval above ``MIN_RATIO`` and the known-grid test of
        :func:`~seamfree.diagnostics.seam_grid.find_seams` (the statistic ``seamfree seams`` uses, at its stated
        false-alarm rate) detecting the grid.
    paired : bool
        The baseline of some axis is a second prediction at the same segments (grid B), not the nearby lines.
    grid_test : dict or None
        ``find_seams(prediction, period=core, offset=first seam)``'s result (``SeamGrid.to_dict()``): the same
        statistic as the model-free test, on the grid the prediction was made on.
    """

    score: float | None
    per_axis: list[float | None]
    seam_jump: float
    interior_jump: float
    seams: int
    map: np.ndarray = field(repr=False, compare=False)
    z: float | None = None
    ci: tuple[float, float] | None = None
    segments: int = 0
    detected: bool | None = None
    paired: bool = False
    grid_test: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "per_axis": self.per_axis, "seam_jump": self.seam_jump,
                "interior_jump": self.interior_jump, "seams": self.seams, "z": self.z,
                "ci": None if self.ci is None else list(self.ci), "segments": self.segments,
                "detected": self.detected, "paired": self.paired, "grid_test": self.grid_test}

    @property
    def faint(self) -> bool:
        """Not detected, yet the interval lies above ``MIN_RATIO`` and ``z > Z_FAINT``: a weak seam signal.

        A tile-dependent model whose offsets are small beside the image's texture lands here; an exactly tiled
        model does not (its score is 1 and its z a standard normal variable)."""
        return (not self.detected and self.ci is not None and self.ci[0] > MIN_RATIO
                and self.z is not None and self.z > Z_FAINT)

    @property
    def summary(self) -> str:
        """One phrase: "seams detected (score 1.8 [1.6, 2.0], z 12)", "faint seams, below the detection
        threshold z 4 (...)" or "no visible seams (...)"."""
        if self.score is None:
            return "no seams in this grid"
        interval = f" [{self.ci[0]:.2f}, {self.ci[1]:.2f}]" if self.ci is not None else ""
        z = f", z {self.z:.1f}" if self.z is not None else ""
        if self.detected:
            verdict = "seams detected"
        elif self.faint:
            verdict = f"faint seams, below the detection threshold z {Z_DETECTED:g}"
        else:
            verdict = "no visible seams"
        return f"{verdict} (score {self.score:.2f}{interval}{z})"


def seam_positions(grid: TileGrid, axis: int) -> list[int]:
    """Return the image coordinates where a core begins along ``axis``, except 0."""
    return [write.start for _, _, write, _ in grid.axis_tiles(axis) if 0 < write.start < grid.image_shape[axis]]


def _ratio(seam: float, interior: float) -> float:
    if interior > 0:
        return seam / interior
    return 1.0 if seam == 0 else float("inf")


def _segment_means(plane: np.ndarray) -> np.ndarray:
    """Means of ``plane`` over segments of ``SEGMENT`` voxels per axis (the last, partial segments included)."""
    result = plane
    for axis in range(plane.ndim):
        n = result.shape[axis]
        edges = np.arange(0, n, SEGMENT)
        result = np.add.reduceat(result, edges, axis=axis) / np.diff(np.append(edges, n)).reshape(
            [-1 if a == axis else 1 for a in range(plane.ndim)])
    return result


def _steps(jumps: np.ndarray) -> np.ndarray:
    """Per segment of one line of signed jumps ``(C, *plane)``: the step, ``|mean jump|``, averaged over channels."""
    return np.mean([np.abs(_segment_means(channel)) for channel in jumps.astype(np.float64)], axis=0)


def seam_score(prediction: np.ndarray, grid: TileGrid, *,
               reference: tuple[np.ndarray, TileGrid] | None = None, seed: int = 0) -> SeamScore:
    """Return the seam score of ``prediction`` (C, *spatial) stitched on ``grid``.

    ``reference`` is a second prediction of the same image and the grid it was stitched on, whose seams lie
    elsewhere (``diagnose``'s grid B, NaN where it did not predict). Where it is given (and covers most of an
    axis's seams), each seam segment it covers is compared with the *same* segment of that prediction instead of
    with nearby lines (the others are left out): the image's own
    structure at the seam (an edge that happens to run along it, a brightness step between two halves) is then
    in both and cancels, and an exactly tiled model has no excess at all.
    """
    spatial = prediction.shape[1:]
    seam_map = np.zeros(spatial, dtype=np.float32)
    per_axis: list[float | None] = []
    seam_segments: list[np.ndarray] = []
    reference_segments: list[np.ndarray] = []
    seams = used_pairs = 0
    for axis in range(len(spatial)):
        lines = [b - 1 for b in seam_positions(grid, axis)]  # jump k is between voxels k and k + 1
        if spatial[axis] < 2 or not lines:
            per_axis.append(None)
            continue
        jumps = np.moveaxis(np.diff(prediction, axis=axis + 1), axis + 1, 1)  # (C, line, *plane), signed
        paired = _paired_jumps(reference, axis, lines)
        stride = grid.network_stride[axis]
        is_seam = np.zeros(jumps.shape[1], dtype=bool)
        is_seam[lines] = True
        axis_seam, axis_reference = [], []
        for line in lines:
            references = [k for k in range(line - REFERENCE_LINES * stride, line + REFERENCE_LINES * stride + 1, stride)
                          if 0 <= k < jumps.shape[1] and not is_seam[k]]
            if not references:
                continue
            step = _steps(jumps[:, line])
            others = np.stack([_steps(jumps[:, k]) for k in references])
            baseline = others.mean(axis=0) if paired is None else _steps(paired[:, line])
            known = ~np.isnan(baseline)  # segments grid B did not predict are left out
            axis_seam.append(step[known])
            axis_reference.append(baseline[known])
            # a segment is shown when its step stands out of the reference lines' own spread there
            spread = others.std(axis=0, ddof=1) if len(references) > 1 else np.full_like(step, np.inf)
            excess = np.where(known, step - np.where(known, baseline, 0.0), 0.0)
            shown = np.where(excess > Z_SEGMENT * spread, excess, 0.0)
            expanded = shown
            for a, n in enumerate(jumps.shape[2:]):
                expanded = np.repeat(expanded, SEGMENT, axis=a)[(slice(None),) * a + (slice(0, n),)]
            target = np.moveaxis(seam_map, axis, 0)
            target[line + 1] = np.maximum(target[line + 1], expanded.astype(np.float32))
        seams += len(lines)
        used_pairs += paired is not None
        if axis_seam and sum(len(a) for a in axis_seam) > 0:
            s, r = np.concatenate(axis_seam), np.concatenate(axis_reference)
            seam_segments.append(s)
            reference_segments.append(r)
            per_axis.append(_ratio(float(s.mean()), float(r.mean())))
        else:
            per_axis.append(None)
    grid_test = _grid_test(prediction, grid)
    grid_detected = grid_test is not None and grid_test["detected"] is True
    if not seam_segments:
        return SeamScore(None, per_axis, 0.0, 0.0, seams, seam_map, grid_test=grid_test)
    # an axis's seams can be visible while the other's are not: each axis is tested on its own, and any
    # significant one is a detection (at z > 4, three tests together still almost never fire by chance)
    tests = [(_z(a - b), _bootstrap(a, b, seed)) for a, b in zip(seam_segments, reference_segments)]
    # significant by the paired z, or by the model-free statistic on the known grid: either with a ratio whose
    # interval lies above MIN_RATIO (the effect is there, not only its significance)
    detected = any(ci is not None and ci[0] > MIN_RATIO and ((z is not None and z > Z_DETECTED) or grid_detected)
                   for z, ci in tests)
    known_z = [z for z, _ in tests if z is not None]
    s, r = np.concatenate(seam_segments), np.concatenate(reference_segments)
    return SeamScore(_ratio(float(s.mean()), float(r.mean())), per_axis, float(s.mean()), float(r.mean()), seams,
                     seam_map, max(known_z) if known_z else None, _bootstrap(s, r, seed), len(s),
                     None if not known_z else detected, paired=used_pairs > 0, grid_test=grid_test)


def _grid_test(prediction: np.ndarray, grid: TileGrid) -> dict[str, Any] | None:
    """The model-free test's statistic on the known grid (None where no axis has a seam)."""
    from seamfree.diagnostics.seam_grid import find_seams

    periods, offsets = [], []
    for axis in range(len(prediction.shape) - 1):
        starts = seam_positions(grid, axis)
        core = int(grid.core[axis])
        # an axis without seams is given a period no line of it reaches (it is then not tested)
        periods.append(core if starts else max(2, int(prediction.shape[axis + 1]) + 1))
        offsets.append(int(starts[0] % core) if starts else 0)
    if not any(seam_positions(grid, axis) for axis in range(len(periods))):
        return None
    return find_seams(prediction, period=periods, offset=offsets, kind="values",
                      spatial_dims=len(periods)).to_dict()


def _paired_jumps(reference: tuple[np.ndarray, TileGrid] | None, axis: int, lines: list[int]) -> np.ndarray | None:
    """The reference prediction's signed jumps along ``axis`` (C, line, *plane), or None to use nearby lines.

    None as well where one of the reference grid's seams coincides with one of ours on this axis (an offset of
    a whole number of cores: the two predictions would break at the same place), and where the reference covers
    less than :data:`MIN_PAIRED` of the seams' voxels (a small volume whose shifted grid has few whole tiles).
    """
    if reference is None:
        return None
    other, other_grid = reference
    if {b - 1 for b in seam_positions(other_grid, axis)} & set(lines):
        return None
    jumps = np.moveaxis(np.diff(other, axis=axis + 1), axis + 1, 1)
    if np.mean(~np.isnan(jumps[:, lines])) < MIN_PAIRED:
        return None
    return jumps


def _z(excess: np.ndarray) -> float | None:
    """Mean over its standard error (None for fewer than two segments)."""
    if len(excess) < 2:
        return None
    error = float(excess.std(ddof=1)) / np.sqrt(len(excess))
    if error > 0:
        return float(excess.mean() / error)
    return 0.0 if excess.mean() == 0 else float("inf")


def _bootstrap(seam: np.ndarray, reference: np.ndarray, seed: int) -> tuple[float, float] | None:
    """95 % interval of the ratio of means, resampling segments (paired: a segment keeps its reference)."""
    if len(seam) < 2:
        return None
    rng = np.random.default_rng(seed)
    resamples = int(min(_BOOTSTRAP, max(200, 4_000_000 // len(seam))))  # bounded memory for huge grids
    picks = rng.integers(0, len(seam), size=(resamples, len(seam)))
    numerator, denominator = seam[picks].mean(axis=1), reference[picks].mean(axis=1)
    ratios = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0),
                      np.where(numerator > 0, np.inf, 1.0))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)
