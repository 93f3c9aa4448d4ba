"""What the plugin puts into napari, as layer-data tuples ``(data, metadata, kind)``; no Qt, no napari import.

- :func:`diagnosis_layers`: a diagnosis as layers over the image: the tiled prediction, the seam map, the
  tile-mismatch map, and the core boundaries of the two grids whose disagreement is the tile mismatch;
- :func:`output_layers`: a seamfree OME-Zarr prediction as lazy multiscale layers (probabilities as images,
  masks and instance labels as Labels), read chunk by chunk while napari displays it, also while it fills in;
- :class:`ChannelView`: one channel of a stored ``(C, *spatial)`` array as an array-like napari can slice, with
  no copy and no cache (a refresh shows what has been written since).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.diagnostics.seams import seam_positions
from seamfree.errors import DataError
from seamfree.io.ome import read_calibration
from seamfree.io.readers import ome_datasets, ome_multiscales
from seamfree.tiling.grid import TileGrid

__all__ = ["ChannelView", "LayerData", "audit_rows", "diagnosis_layers", "grid_lines", "output_layers", "verdict_text"]

LayerData = tuple[Any, dict[str, Any], str]

# the two grids of the tile mismatch: A (the prediction's own cores) and B (shifted by half a core)
GRID_COLORS = {"A": "cyan", "B": "magenta"}


class ChannelView:
    """Channel ``channel`` of ``array`` (its axis ``axis``, 0 for ``(C, *spatial)``, 1 for ``(T, C, *spatial)``),
    read on each access: napari slices it like an array; nothing is loaded until displayed."""

    def __init__(self, array: Any, channel: int = 0, axis: int = 0) -> None:
        self.array, self.channel, self.axis = array, channel, axis
        shape = tuple(int(n) for n in array.shape)
        self.shape = shape[:axis] + shape[axis + 1:]
        self.dtype = np.dtype(array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        full = (*key[:self.axis], self.channel, *key[self.axis:])
        return np.asarray(self.array[full])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # napari asks for this only for small arrays (its thumbnails of one level); the caller decides the size
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"ChannelView(channel {self.channel} of {type(self.array).__name__} {tuple(self.array.shape)})"


def verdict_text(diagnosis: Any) -> str:
    """The diagnosis in a few lines: the verdict, its message, the indicators, the advice."""
    tm, ted, seams = diagnosis.tile_mismatch, diagnosis.disparity, diagnosis.seams
    lines = [f"{diagnosis.recommendation.verdict}: {diagnosis.recommendation.message}",
             f"TM_dice {tm.tm_dice:.3g}   TM_abs {tm.tm_abs:.2g}   TED_dice {ted.ted_dice:.3g}   "
             f"TED_abs {ted.ted_abs:.2g}",
             f"seams: {seams.summary}",
             f"max |tiled − whole| {diagnosis.exactness.max_abs:.2g}"]
    if diagnosis.dice is not None:
        lines.append(f"Dice (tiled) {diagnosis.dice:.3f}")
    lines += [f"→ {action}" for action in diagnosis.recommendation.actions]
    return "\n".join(lines)


def audit_rows(diagnosis: Any) -> list[dict[str, str]]:
    """The norm audit as table rows: which layers make the prediction depend on the tile."""
    report = diagnosis.audit.to_dict()
    rows = []
    for entry in report.get("layers", []):
        dependent = entry.get("tile_dependent")
        rows.append({"layer": str(entry.get("name", "")), "type": str(entry.get("type", "")),
                     "statistics": str(entry.get("statistics", "")),
                     "tile-dependent": "unknown" if dependent is None else "yes" if dependent else "no",
                     "note": str(entry.get("note", ""))})
    return rows


def grid_lines(shape: Sequence[int], core: Sequence[int], halo: Sequence[int], stride: Sequence[int],
               offset: Sequence[int] | int = 0) -> list[np.ndarray]:
    """The core boundaries of a grid over an image of ``shape``, as lines in its last two axes (image
    coordinates, ``(2, 2)`` vertices each): a 2D shapes layer that napari shows on every plane of a volume."""
    grid = TileGrid.create(tuple(shape), tuple(core), tuple(halo), network_stride=tuple(stride), offset=offset)
    dims = len(shape)
    rows, cols = dims - 2, dims - 1
    height, width = shape[rows], shape[cols]
    lines = [np.array([[y, 0.0], [y, width]], float) for y in seam_positions(grid, rows)]
    lines += [np.array([[0.0, x], [height, x]], float) for x in seam_positions(grid, cols)]
    return lines


def diagnosis_layers(diagnosis: Any, *, scale: Sequence[float] | None = None,
                     translate: Sequence[float] | None = None, name: str | None = None) -> list[LayerData]:
    """The layers of ``diagnosis`` over the image it was made on (whose layer has ``scale`` and ``translate``):
    the tiled prediction, the seam map, the tile-mismatch map and the two grids' core boundaries."""
    geometry = diagnosis.geometry
    region = [tuple(r) for r in geometry["region"]]
    dims = len(region)
    scale = tuple(float(s) for s in (scale if scale is not None else (1.0,) * dims))[-dims:]
    translate = tuple(float(t) for t in (translate if translate is not None else (0.0,) * dims))[-dims:]
    origin = tuple(t + start * s for t, (start, _), s in zip(translate, region, scale))
    label = name or diagnosis.name
    placed = {"scale": scale, "translate": origin}
    prediction = np.asarray(diagnosis.prediction)
    channels = prediction.shape[0]
    layers: list[LayerData] = [
        (prediction[c], {**placed, "name": f"{label}: tiled prediction" + (f" {c}" if channels > 1 else ""),
                         "colormap": "gray", "contrast_limits": _limits(prediction[c]),
                         "metadata": {"seamfree": "tiled prediction"}}, "image")
        for c in range(channels)
    ]
    seam_map = np.asarray(diagnosis.seams.map, np.float32)
    layers.append((seam_map, {**placed, "name": f"{label}: seam map", "colormap": "inferno", "blending": "additive",
                              "contrast_limits": (0.0, max(float(seam_map.max()), 1e-6)),
                              "metadata": {"seamfree": "seam map"}}, "image"))
    mismatch = np.nan_to_num(np.asarray(diagnosis.tile_mismatch.map, np.float32), nan=0.0)
    layers.append((mismatch, {**placed, "name": f"{label}: tile mismatch |A − B|", "colormap": "magma",
                              "blending": "additive",
                              "contrast_limits": (0.0, max(float(mismatch.max()), 1e-6)),
                              "metadata": {"seamfree": "tile mismatch"}}, "image"))
    shape = tuple(stop - start for start, stop in region)
    core, halo, stride = geometry["core"], geometry["halo"], geometry["network_stride"]
    lines, colors = [], []
    for grid, offset in (("A", 0), ("B", geometry["grid_offset"])):
        found = grid_lines(shape, core, halo, stride, offset)
        lines += found
        colors += [GRID_COLORS[grid]] * len(found)
    if lines:
        layers.append((lines, {"scale": scale[-2:], "translate": origin[-2:], "shape_type": "line",
                               "edge_color": colors, "edge_width": max(1.0, min(shape[-2:]) / 400) * scale[-1],
                               "name": f"{label}: core grids (A cyan, B magenta)", "opacity": 0.7,
                               "metadata": {"seamfree": "core grid"}}, "shapes"))
    return layers


def _limits(data: np.ndarray) -> tuple[float, float]:
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    return (low, high) if high > low else (low, low + 1.0)


def output_layers(path: str | Path, name: str | None = None) -> list[LayerData]:
    """A seamfree OME-Zarr output as lazy multiscale layers: each channel of the image (a label image: Labels),
    and each label image under ``labels/`` (the mask, instance labels) as Labels. Works while it is being written:
    the levels listed so far (level 0 only until the pyramid is written), read on display."""
    import zarr

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise DataError(f"cannot open {str(path)!r} as an OME-Zarr group ({exc}); pass the .zarr folder a seamfree "
                        "prediction wrote") from exc
    label = name or path.stem
    layers = _image_layers(group, label, labels=False)
    if "labels" in group:
        labels: Any = group["labels"]
        attrs: Any = dict(labels.attrs)
        names: list[str] = attrs.get("ome", attrs).get("labels", [])
        for member in names:
            if member in labels:
                layers += _image_layers(labels[member], f"{label}: {member}", labels=True)
    return layers


def _image_layers(group: Any, label: str, *, labels: bool) -> list[LayerData]:
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome_multiscales(attrs)
    if not multiscales:
        raise DataError(f"{label!r} has no OME-NGFF multiscales metadata: not an OME-Zarr image")
    image = multiscales[0]
    datasets, axes = ome_datasets(image, label)
    levels = [level for level in datasets if level["path"] in group]
    if not levels:
        raise DataError(f"{label!r} lists no level that is stored yet")
    channel_axis = axes.index("c") if "c" in axes else None
    is_labels = labels or "image-label" in ome
    calibration = read_calibration(image, levels[0])
    lead = [1.0] * (len(axes) - (channel_axis is not None) - len(calibration.scale or ()))
    scale = (*lead, *(calibration.scale or ()))
    translate = (*[0.0] * len(lead), *(calibration.translation or ()))
    arrays = [group[level["path"]] for level in levels]
    channels = int(arrays[0].shape[channel_axis]) if channel_axis is not None else 1
    names = [c.get("label", f"channel {i}") for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
    found: list[LayerData] = []
    for c in range(channels):
        data = [ChannelView(a, c, channel_axis) if channel_axis is not None else a for a in arrays]
        title = label if channels == 1 else f"{label}: {names[c] if c < len(names) else f'channel {c}'}"
        meta: dict[str, Any] = {"name": title, "scale": scale, "translate": translate,
                                "multiscale": len(data) > 1, "metadata": {"seamfree_output": str(group.store_path)}}
        if is_labels:
            found.append((data if len(data) > 1 else data[0], meta, "labels"))
        else:
            kind = np.dtype(arrays[0].dtype)
            limits = (0.0, 255.0) if kind == np.uint8 else (0.0, 1.0)
            found.append((data if len(data) > 1 else data[0], {**meta, "contrast_limits": limits}, "image"))
    return found
