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

from seamfree.diagnostics.seam_lines import (
    CLIP,
    FALSE_ALARM_RATE,
    MIN_LINES,
    MIN_PERIOD,
    MIN_SEGMENTS,
    SEGMENT,
    LineSteps,
    comb_statistic,
    line_steps,
    line_z,
)
from seamfree.diagnostics.seam_search import (
    AxisGrid,
    axis_lines,
    axis_result,
    axis_tests,
    candidate_periods,
    with_joint,
)
from seamfree.errors import ConfigError, ShapeError
from seamfree.tiling.stitching import BLEND, CROP, STITCHINGS

__all__ = ["CLIP", "FALSE_ALARM_RATE", "MIN_LINES", "MIN_PERIOD", "AxisGrid", "SeamGrid", "comb_statistic",
           "find_seams", "line_steps", "line_z", "recorded_grid"]

Kind = Literal["auto", "values", "labels"]


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
    lines = [axis_lines({lag: steps[a] for lag, steps in measured.steps.items()}) for a in range(dims)]
    known = periods is not None
    rng = np.random.default_rng(0)  # the shuffles are part of the answer: the same prediction, the same verdict
    candidates = ([[p] for p in periods] if periods is not None
                  else [list(candidate_periods(axis[0].steps.shape[0])) for axis in lines])
    tests = [axis_tests(axis, ps, offsets[a] if known else None, not known, rng)
             for a, (axis, ps) in enumerate(zip(lines, candidates))]
    axes = [axis_result(t, known) for t in tests]
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
        axes = with_joint(axes, tests, known)
    found = sorted({a.period for a in axes if a.detected and a.period is not None})
    if found and not known:
        # an axis whose own search fell short is searched at the periods found on the others (non-square tiles)
        axes = [a if a.detected else _with_detection(axis_result(axis_tests(axis, found, None, True, rng), False),
                                                     level)
                for a, axis in zip(axes, lines)]
    detected = any(a.detected for a in axes)
    seam_map = _seam_map(axes, [axis[0].excess for axis in lines], measured) if detected else None
    cut = _objects_cut(source, axes) if detected and resolved == "labels" else None
    reason = ("a grid along axis " + ", ".join(str(i) for i, a in enumerate(axes) if a.detected) if detected
              else "no comb of lines stands out of the rest")
    return SeamGrid(detected, axes, FALSE_ALARM_RATE, known, resolved, reason, seam_map,
                    measured.segment, objects, cut)


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
    if not isinstance(core, list) or not STITCHINGS.get(settings.get("stitching", CROP.name), BLEND).exact:
        return None, None
    shift = settings.get("grid_offset") or 0
    shifts = [int(shift)] * len(core) if isinstance(shift, int | float) else [int(s) for s in shift]
    return tuple(int(c) for c in core), tuple(s % int(c) for s, c in zip(shifts, core))
