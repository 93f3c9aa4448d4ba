"""Reading TIFF (memory-mapped, or chunk-wise through tifffile's zarr store) and HDF5 inputs, and the pixel sizes
that OME-TIFF and ImageJ TIFF files record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seamfree.errors import ConfigError, DataError, require
from seamfree.io.ome import Calibration, normalized_unit

__all__ = ["open_hdf5", "open_tiff", "tiff_calibration", "tiff_channel_axis"]


def open_tiff(path: Path) -> tuple[Any, Any]:
    """Return (array, handle to close): a memory map, or tifffile's zarr store for compressed/tiled files."""
    tifffile = require("tifffile", "tiff")
    if path.is_dir():
        raise DataError(f"input {str(path)!r} is a folder, not a TIFF file; pass the path of a .tif file")
    try:
        return tifffile.memmap(str(path), mode="r"), None  # type: ignore[attr-defined]
    except ValueError:
        pass  # compressed or tiled: read chunk-wise through tifffile's zarr store
    except Exception as exc:  # empty, truncated or not a TIFF at all: tifffile fails in many ways
        raise _unreadable_tiff(path, exc) from exc
    zarr = require("zarr", "zarr")
    try:
        # level 0 of a pyramid (whole-slide images, QuPath/bfconvert exports: SubIFDs or reduced pages)
        store = tifffile.imread(str(path), aszarr=True, level=0)  # type: ignore[attr-defined]
        node = zarr.open(store, mode="r")  # type: ignore[attr-defined]
        if not hasattr(node, "ndim"):  # a group of levels (an older tifffile ignoring level=): its first array
            node = node[sorted(name for name, _ in node.arrays())[0]]
        return node, store
    except Exception as exc:
        raise _unreadable_tiff(path, exc) from exc


def tiff_channel_axis(path: Path, ndim: int) -> int | None:
    """The channel axis a TIFF records: its samples (RGB, ``S``) or its ``C`` axis (None: not said)."""
    tifffile = require("tifffile", "tiff")
    try:
        with tifffile.TiffFile(str(path)) as tif:  # type: ignore[attr-defined]
            axes = tif.series[0].axes
    except Exception:  # unreadable metadata: the caller decides from the shape
        return None
    if len(axes) != ndim:
        return None
    for letter in "SC":
        if letter in axes:
            return axes.index(letter)
    return -1 if set(axes) <= set("ZYX") else None  # named spatial axes only; Q, I... leave it to the shape


def tiff_calibration(path: Path) -> Calibration | None:
    """Pixel sizes (z, y, x order) and unit of an OME-TIFF or ImageJ TIFF; None when the file records none."""
    tifffile = require("tifffile", "tiff")
    try:
        with tifffile.TiffFile(str(path)) as tif:  # type: ignore[attr-defined]
            if tif.is_ome and tif.ome_metadata:
                pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]  # type: ignore[attr-defined]
                pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
                sizes = [pixels.get(f"PhysicalSize{a}") for a in "ZYX"]
                units = [pixels.get(f"PhysicalSize{a}Unit", "µm") for a in "ZYX"]
                origin = _plane_origin(pixels.get("Plane"))
            elif tif.is_imagej:
                meta = tif.imagej_metadata or {}
                tags = tif.pages.first.tags
                sizes = [meta.get("spacing")]
                for tag in ("YResolution", "XResolution"):
                    value = tags[tag].value if tag in tags else None
                    sizes.append(value[1] / value[0] if value and value[0] else None)
                units = [meta.get("unit")] * 3
                origin = None
            else:
                return None
    except Exception:  # metadata we cannot parse: the image still reads, without calibration
        return None
    known = [(s, u) for s, u in zip(sizes, units) if s is not None]
    if not known:
        return None
    scale = tuple(float(s) if s is not None else 1.0 for s in sizes)
    return Calibration(scale, origin, tuple(_unit_or_none(u) for u in units))


def _plane_origin(planes: Any) -> tuple[float, float, float] | None:
    """The origin (z, y, x) of an OME-TIFF image: the position of its first plane (None when not recorded).
    Positions are taken in the unit of the pixel sizes, as seamfree writes them."""
    first = planes[0] if isinstance(planes, list) and planes else planes
    if not isinstance(first, dict) or not any(f"Position{a}" in first for a in "ZYX"):
        return None
    return tuple(float(first.get(f"Position{a}", 0.0)) for a in "ZYX")  # type: ignore[return-value]


def _unit_or_none(unit: Any) -> str | None:
    try:
        return normalized_unit(str(unit).replace("\\u00B5", "µ")) if unit else None
    except ConfigError:
        return None


def _unreadable_tiff(path: Path, cause: Exception) -> DataError:
    size = path.stat().st_size if path.exists() else 0
    return DataError(f"cannot read {str(path)!r} ({size} bytes) as a TIFF ({type(cause).__name__}: "
                     f"{' '.join(str(cause).split())}); check that the file is a complete TIFF image")


def open_hdf5(path: Path, key: str | None) -> Any:
    h5py = require("h5py", "h5")
    handle = h5py.File(path, "r")  # type: ignore[attr-defined]
    datasets: list[str] = []
    handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)  # type: ignore[attr-defined]
    if key is None and len(datasets) != 1:
        handle.close()
        raise DataError(f"{str(path)!r} holds {len(datasets)} datasets ({', '.join(datasets[:8])}); choose one with "
                        "key=... (CLI --key)")
    key = key if key is not None else datasets[0]
    if key not in datasets:
        handle.close()
        raise DataError(f"{str(path)!r} has no dataset {key!r}; it holds {', '.join(datasets[:8]) or 'none'}; pass "
                        "one of them with --key")
    return handle[key]
