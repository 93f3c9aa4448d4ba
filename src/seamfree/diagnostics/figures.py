"""The report's pictures: zoomed crops at a seam crossing, the overviews, the tile grid, the indicator bars.

The crops are the figure a person looks at first. Every model is cut at the same place (a crossing of two seams,
where the models' tiles disagree most) and shown on the same colour scales, at full resolution: input,
prediction, and |A − B| (the prediction against the one on grid B, shifted by half a core). Tick marks in a white
margin show where the seams run; nothing is drawn over the data. The crops are plain pixel images (one PNG pixel
per voxel, enlarged by a whole factor), so the browser's ``image-rendering: pixelated`` keeps every voxel sharp.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seamfree.diagnostics.diagnose import Diagnosis
from seamfree.diagnostics.recommend import TM_ABS_NOISE
from seamfree.diagnostics.seams import seam_positions
from seamfree.errors import require
from seamfree.metrics import binarize
from seamfree.tiling.grid import TileGrid

__all__ = ["Crops", "bars_figure", "crops", "crops_figure", "overview_figures", "pyplot"]

# side of the zoomed crops (voxels) and the least size they are shown at (screen pixels)
CROP = 160
CROP_DISPLAY = 320
_MARGIN = 6  # white margin (PNG pixels) that carries the seam ticks
_TICK = (255, 0, 255)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (the plot extra)."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def middle_slice(volume: np.ndarray) -> np.ndarray:
    """Return a 2D view: the array itself, or the middle plane of the first axis of a 3D array."""
    return volume if volume.ndim == 2 else volume[volume.shape[0] // 2]


def grid_of(diagnosis: Diagnosis) -> TileGrid:
    g = diagnosis.geometry
    return TileGrid.create(diagnosis.prediction.shape[1:], g["core"], g["halo"], network_stride=g["network_stride"])


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class Crops:
    """Zoomed crops of every diagnosis at one seam crossing, on shared colour scales.

    Attributes
    ----------
    window : tuple of slice
        The crop in the diagnosed region's (y, x) coordinates (the middle z plane of a volume).
    crossing : tuple of int
        The seam crossing it is centred on.
    images : list of dict
        Per diagnosis: ``input``, ``prediction``, ``difference`` PNG bytes.
    values : list of dict
        Per diagnosis: the same three crops as arrays (input contrast range under ``input_range``).
    scales : dict
        The shared colour ranges: ``prediction`` (low, high) and ``difference`` (0, high).
    zoom : int
        Screen pixels per voxel.
    largest_difference : list of float
        Per diagnosis, the largest |A − B| in the crop (0 for an exactly tiled model).
    """

    window: tuple[slice, slice]
    crossing: tuple[int, int]
    images: list[dict[str, bytes]]
    scales: dict[str, tuple[float, float]]
    zoom: int
    largest_difference: list[float]
    values: list[dict[str, Any]]


def _crossings(grid: TileGrid) -> list[tuple[int, int]]:
    dims = grid.spatial_dims
    ys = seam_positions(grid, dims - 2) or [grid.image_shape[dims - 2] // 2]
    xs = seam_positions(grid, dims - 1) or [grid.image_shape[dims - 1] // 2]
    return [(y, x) for y in ys for x in xs]


def _window(center: tuple[int, int], shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    result = []
    for c, n in zip(center, shape):
        extent = min(size, n)
        start = int(np.clip(c - extent // 2, 0, n - extent))
        result.append(slice(start, start + extent))
    return result[0], result[1]


def _difference(diagnosis: Diagnosis) -> np.ndarray:
    return middle_slice(diagnosis.tile_mismatch.map)


def crops(diagnoses: Sequence[Diagnosis], size: int = CROP) -> Crops:
    """Cut every diagnosis at the seam crossing where its tiles disagree most (summed over the diagnoses; the one
    nearest the centre where none disagree), and render the crops on shared colour scales."""
    first = diagnoses[0]
    grid = grid_of(first)
    plane = middle_slice(first.prediction[0]).shape
    candidates = _crossings(grid)
    centre = np.array(plane) / 2

    def disagreement(crossing: tuple[int, int]) -> tuple[float, float]:
        window = _window(crossing, plane, size)
        total = 0.0
        for d in diagnoses:
            values = _difference(d)[window]
            finite = values[np.isfinite(values)]
            total += float(finite.mean()) if finite.size else 0.0
        return total, -float(np.hypot(*(np.array(crossing) - centre)))

    crossing = max(candidates, key=disagreement)
    window = _window(crossing, plane, size)
    zoom = max(1, -(-CROP_DISPLAY // max(size, 1)))
    predictions = [middle_slice(d.prediction[0])[window] for d in diagnoses]
    low = float(min(min(p.min() for p in predictions), 0.0))
    high = float(max(max(p.max() for p in predictions), 1.0 if low >= 0 else 0.0))
    differences = [np.nan_to_num(_difference(d)[window], nan=0.0) for d in diagnoses]
    largest = [float(np.abs(v).max()) if v.size else 0.0 for v in differences]
    top = max(largest) or 1.0  # all exact: the scale does not matter, every crop is black
    plt = pyplot()
    seams = _seam_ticks(grid, window)
    images, values = [], []
    for d, prediction, difference in zip(diagnoses, predictions, differences):
        whole = middle_slice(d.image[0])  # the input's contrast is the whole region's, as in its overview
        low_in, high_in = np.percentile(whole, [1, 99.8]) if whole.size else (0.0, 1.0)
        picture = whole[window]
        images.append({
            "input": _pixels(plt, picture, "gray", float(low_in), float(high_in), zoom, seams),
            "prediction": _pixels(plt, prediction, "viridis", low, high, zoom, seams),
            "difference": _pixels(plt, difference, "inferno", 0.0, top, zoom, seams),
        })
        values.append({"input": picture, "input_range": (float(low_in), float(high_in)), "prediction": prediction,
                       "difference": difference})
    return Crops(window, crossing, images, {"prediction": (low, high), "difference": (0.0, top)}, zoom, largest,
                 values)


def crops_figure(diagnoses: Sequence[Diagnosis], cut: Crops) -> bytes:
    """The crops of every model in one picture (rows: input, prediction, |A − B|), with colour bars and the seams
    as ticks on the axes: the report's main figure, for a README or a slide."""
    plt = pyplot()
    rows = (("input", "gray"), ("prediction", "viridis"), ("difference", "inferno"))
    labels = {"input": "input", "prediction": "prediction", "difference": "|A − B| (grid B shifted)"}
    height, width = cut.values[0]["prediction"].shape
    panel = 3.0
    figure, axes = plt.subplots(len(rows), len(diagnoses), squeeze=False,
                                figsize=(panel * len(diagnoses) + 1.2, panel * len(rows) * height / width + 0.8))
    grid = grid_of(diagnoses[0])
    seams = _seam_ticks(grid, cut.window)
    for column, (d, values) in enumerate(zip(diagnoses, cut.values)):
        for row, (key, cmap) in enumerate(rows):
            axis = axes[row][column]
            low, high = values["input_range"] if key == "input" else cut.scales[key]
            shown = axis.imshow(values[key], cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
            axis.set_yticks(seams[0])
            axis.set_xticks(seams[1])
            axis.tick_params(length=5, color="#ff00ff", width=1.5, labelleft=False, labelbottom=False)
            if row == 0:
                axis.set_title(d.name, fontsize=11)
            if column == 0:
                axis.set_ylabel(labels[key], fontsize=10)
            if column == len(diagnoses) - 1 and key != "input":
                figure.colorbar(shown, ax=list(axes[row]), fraction=0.03, pad=0.02)
    y, x = cut.window
    figure.suptitle(f"at a seam crossing (y {y.start}–{y.stop}, x {x.start}–{x.stop}); ticks: seams", fontsize=10)
    return _png(figure)


def _seam_ticks(grid: TileGrid, window: tuple[slice, slice]) -> tuple[list[int], list[int]]:
    """Seam positions inside ``window``, relative to it (rows, columns)."""
    dims = grid.spatial_dims
    return tuple(  # type: ignore[return-value]
        [p - w.start for p in seam_positions(grid, axis) if w.start < p < w.stop]
        for axis, w in zip((dims - 2, dims - 1), window))


def _pixels(plt: Any, values: np.ndarray, cmap: str, low: float, high: float, zoom: int,
            seams: tuple[list[int], list[int]]) -> bytes:
    """A PNG of ``values`` through ``cmap``, ``zoom`` pixels per voxel, with seam ticks in a white margin."""
    span = high - low if high > low else 1.0
    rgb = (plt.get_cmap(cmap)(np.clip((values - low) / span, 0, 1))[..., :3] * 255).astype(np.uint8)
    rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    framed = np.full((rgb.shape[0] + 2 * _MARGIN, rgb.shape[1] + 2 * _MARGIN, 3), 255, np.uint8)
    framed[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN] = rgb
    rows, columns = seams
    for r in rows:  # ticks on the left and right margins where a horizontal seam runs
        y = _MARGIN + r * zoom
        framed[y - 1:y + 1, :_MARGIN - 1] = _TICK
        framed[y - 1:y + 1, -_MARGIN + 1:] = _TICK
    for c in columns:
        x = _MARGIN + c * zoom
        framed[:_MARGIN - 1, x - 1:x + 1] = _TICK
        framed[-_MARGIN + 1:, x - 1:x + 1] = _TICK
    buffer = io.BytesIO()
    plt.imsave(buffer, framed, format="png")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ overviews


def _image_figure(values: np.ndarray, title: str, *, cmap: str, vmin: float | None = None,
                  vmax: float | None = None, colorbar: bool = False) -> bytes:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5.2 * values.shape[0] / max(values.shape[1], 1) + 0.4))
    shown = axis.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if colorbar:
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
    axis.set_title(title, fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])
    return _png(figure)


def _grid_figure(diagnosis: Diagnosis, crop: tuple[slice, slice] | None) -> bytes:
    """The core grid of the diagnosis (grid A solid, grid B dashed) and where the crops were cut."""
    plt = pyplot()
    grid = grid_of(diagnosis)
    dims = grid.spatial_dims
    height, width = grid.image_shape[dims - 2], grid.image_shape[dims - 1]
    figure, axis = plt.subplots(figsize=(2.6, 2.6 * height / max(width, 1) + 0.3))
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_aspect("equal")
    offset = diagnosis.geometry.get("grid_offset") or [c // 2 for c in grid.core]
    for axis_index, draw, extent in ((dims - 2, axis.axhline, height), (dims - 1, axis.axvline, width)):
        for p in seam_positions(grid, axis_index):
            draw(p, color="#ff00ff", linewidth=0.8)
        core, shift = grid.core[axis_index], offset[axis_index] % grid.core[axis_index]
        for p in range(shift, extent, core):
            if p > 0:
                draw(p, color="#4060ff", linewidth=0.6, linestyle="--")
    if crop is not None:
        from matplotlib.patches import Rectangle

        y, x = crop
        axis.add_patch(Rectangle((x.start, y.start), x.stop - x.start, y.stop - y.start, fill=False,
                                 edgecolor="black", linewidth=1.4))
    axis.set_title("tile grid: A (magenta), B (dashed), crop (black)", fontsize=8)
    axis.tick_params(labelsize=7)
    return _png(figure)


def _seam_figure(diagnosis: Diagnosis) -> bytes:
    seam_map = middle_slice(diagnosis.seams.map)
    # Seam lines are one voxel wide: widen them so that they stay visible in a downscaled figure.
    from scipy import ndimage

    width = max(1, round(max(seam_map.shape) / 300))
    widened = ndimage.maximum_filter(seam_map, size=2 * width + 1)
    top = float(np.percentile(widened[widened > 0], 99)) if (widened > 0).any() else 1.0
    return _image_figure(widened, f"seam map: significant excess jump at core boundaries; "
                         f"{diagnosis.seams.summary}", cmap="magma", vmin=0, vmax=max(top, 1e-6), colorbar=True)


def overview_figures(diagnosis: Diagnosis, crop: tuple[slice, slice] | None) -> dict[str, tuple[bytes, str]]:
    """The whole diagnosed region: input, prediction, seam map, tile mismatch, and the grid panel."""
    image = middle_slice(diagnosis.image[0])
    low, high = np.percentile(image, [1, 99.8]) if image.size else (0, 1)
    prediction = middle_slice(diagnosis.prediction[0])
    mismatch = middle_slice(diagnosis.tile_mismatch.map)
    finite = mismatch[np.isfinite(mismatch)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
    plane = " (middle z plane)" if diagnosis.image.ndim == 4 else ""
    return {
        "grid": (_grid_figure(diagnosis, crop), "where the tiles' cores meet, and where the crops above were cut"),
        "input": (_image_figure(image, f"input{plane}", cmap="gray", vmin=float(low), vmax=float(high)),
                  "the image region diagnosed"),
        "prediction": (_image_figure(prediction, "tiled prediction, channel 0", cmap="viridis", vmin=0, vmax=1),
                       "crop-stitched prediction on grid A (the seams are in the grid panel, not drawn here)"),
        "seams": (_seam_figure(diagnosis), "excess jump across each seam over the same place predicted on grid B; "
                                           "flat (black) for a seamless model"),
        "mismatch": (_image_figure(np.ma.masked_invalid(mismatch), "tile mismatch |A − B| (grid B shifted by half "
                                   "a core)", cmap="inferno", vmin=0, vmax=top, colorbar=True),
                     "where two overlapping tiles disagree; blank where grid B did not predict"),
        **_instance_figure(diagnosis),
    }


def _instance_figure(diagnosis: Diagnosis) -> dict[str, tuple[bytes, str]]:
    """The objects the two tilings segment differently (bright) over the foreground of grid A (dim)."""
    found = diagnosis.instances
    if found is None:
        return {}
    activation, threshold = diagnosis.geometry["activation"], diagnosis.geometry["threshold"]
    foreground = middle_slice(binarize(diagnosis.prediction, activation=activation, threshold=threshold)[0])
    picture = 0.35 * foreground.astype(np.float32)
    picture[middle_slice(found.map)] = 1.0
    title = f"instance TM: {found.differing} of {found.objects_a + found.objects_b} objects differ"
    return {"instances": (_image_figure(picture, title, cmap="magma", vmin=0, vmax=1),
                          "objects of grid A or B without a partner at IoU ≥ 0.5 in the other tiling (bright): "
                          "what a seam cuts, merges or drops once the prediction is labelled")}


def bars_figure(diagnoses: Sequence[Diagnosis]) -> bytes:
    """TM and TED per model on a log scale; a quantity that is exactly 0 has no bar, only the label "0"."""
    plt = pyplot()
    names = ["TM_dice", "TM_abs", "TED_dice", "TED_abs"]
    floor = 1e-8
    figure, axis = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(diagnoses)
    for k, d in enumerate(diagnoses):
        values = [d.tile_mismatch.tm_dice, d.tile_mismatch.tm_abs, d.disparity.ted_dice, d.disparity.ted_abs]
        positions = np.arange(len(names)) + (k - (len(diagnoses) - 1) / 2) * width
        heights = [v if v > floor else 0.0 for v in values]  # 0 (or below the axis): no bar at all
        bars = axis.bar(positions, heights, width, label=d.name, bottom=floor / 2)
        for bar, value in zip(bars, values):
            label = "0" if value == 0 else f"{value:.1e}"
            y = max(value, floor / 2)
            axis.annotate(label, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=8)
    axis.set_yscale("log")
    axis.set_ylim(floor / 2, 2.0)
    axis.set_xticks(range(len(names)), names)
    axis.axhline(TM_ABS_NOISE, color="grey", linestyle=":", linewidth=0.8)
    axis.set_ylabel("value (log scale)")
    axis.set_title("tile mismatch and train/eval disparity (lower is better; no bar: 0)", fontsize=10)
    axis.legend(fontsize=8)
    return _png(figure)
