"""Open images lazily, whatever their format, as channel-first arrays: shape ``(C, *spatial)``.

Formats: numpy arrays and ``.npy`` (memory-mapped), zarr v3 arrays and OME-Zarr groups (level 0 of the
multiscale image), TIFF/BigTIFF (memory-mapped when uncompressed, chunk-wise through tifffile's zarr store
otherwise) and HDF5 datasets. Axis strings such as ``"ZYX"`` or ``"YXC"`` are accepted here, at the I/O
boundary, and nowhere else.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import DataError, ShapeError, require
from seamfree.io.formats import open_hdf5, open_tiff, tiff_calibration, tiff_channel_axis
from seamfree.io.ome import Calibration, TimeCalibration, read_calibration, time_calibration
from seamfree.io.source import (
    SUPPORTED_DTYPES,
    FrameSeries,
    ImageSource,
    TimeSeries,
    parse_axes,
    split_time,
)

__all__ = ["SUPPORTED_DTYPES", "FrameSeries", "ImageSource", "TimeCalibration", "TimeSeries", "ome_datasets",
           "ome_multiscales", "open_image", "parse_axes", "split_time"]

logger = logging.getLogger(__name__)

# Seconds a URL input may take to answer (a sixth of it to connect): an unreachable server fails fast.
URL_TIMEOUT = 60.0


def _default_channel_axis(ndim: int, spatial_dims: int | None, where: str) -> int | None:
    if spatial_dims is None:
        return None
    if ndim == spatial_dims:
        return None
    if ndim == spatial_dims + 1:
        return 0
    extra = ndim - spatial_dims - 1
    example = "T" * max(extra, 0) + "C" + "ZYX"[3 - spatial_dims:]
    raise ShapeError(
        f"{where} has {ndim} dimensions but the model expects {spatial_dims} spatial dimensions "
        f"(with an optional channel axis first); pass axes=... (CLI --axes) to say which axis is which, e.g. "
        f"--axes {example} for a leading axis of length 1 (a bioimage.io test tensor is (1, C, ...): BCYX)"
    )


def open_image(
    source: str | os.PathLike[str] | np.ndarray | Any,
    *,
    spatial_dims: int | None = None,
    axes: str | None = None,
    key: str | None = None,
    channels: Sequence[int] | None = None,
    gray: bool = False,
    frames: bool = False,
) -> Any:
    """Return an :class:`ImageSource` for an array or a file path (a :class:`FrameSeries` for a time series,
    when ``frames``).

    Parameters
    ----------
    source : path or array-like
        A numpy/zarr/h5py array, or the path of a ``.npy``, ``.zarr``/OME-Zarr, ``.tif``/``.tiff`` or
        ``.h5``/``.hdf5`` file.
    spatial_dims : int, optional
        Spatial dimensions the caller expects (2 or 3); used to tell a channel axis from a spatial one.
    axes : str, optional
        Axis order of the stored array, e.g. ``"ZYX"``, ``"CYX"``, ``"YXC"``. Default: from OME-Zarr
        metadata, else channel-first.
    key : str, optional
        Dataset inside an HDF5 file or array inside a zarr group.
    channels : sequence of int, optional
        Stored channels to read, in this order (CLI ``--channels``); default all.
    gray : bool
        Read the (selected) channels as one gray channel, their mean (CLI ``--gray``: an RGB image for a
        one-channel model).
    frames : bool
        Accept a time series (``axes`` starting with ``T``, or an OME-Zarr with a ``t`` axis) and return a
        :class:`FrameSeries` for it; without, a time series is an error that says to select a frame.

    Examples
    --------
    >>> import numpy as np
    >>> open_image(np.zeros((3, 16, 16)), spatial_dims=2).shape
    (3, 16, 16)
    """
    if isinstance(source, ImageSource) or (frames and isinstance(source, FrameSeries)):
        return source
    has_time, axes = split_time(axes)
    handle = None
    path: str | None
    if isinstance(source, str) and "://" in source:
        data, channel_axis_meta, path, scale = _open_url(source, key)
    elif isinstance(source, str | os.PathLike):
        data, channel_axis_meta, path, scale, handle = _open_path(Path(source), key)
    else:
        data, channel_axis_meta, path, scale = _in_memory(source, key)
    where = repr(path) if path else "the input array"
    series = data if isinstance(data, TimeSeries) else TimeSeries(data) if has_time else None
    if series is not None and not frames:
        if handle is not None:
            handle.close()
        raise ShapeError(f"{where} is a time series ({series.shape[0]} frames, shape {series.shape}): only "
                         "seamfree predict on one machine (without --workers/--scheduler) predicts a series, frame "
                         "by frame; here, select one frame first (e.g. image[t] in Python)")
    frame = data if series is None else series.frame(0)
    channel_axis = _channel_axis(frame, axes, channel_axis_meta, spatial_dims, where)
    spatial_count = len(frame.shape) - (channel_axis is not None)
    if spatial_count not in (1, 2, 3):
        raise ShapeError(f"{where} has shape {tuple(data.shape)}: expected 2 or 3 spatial dimensions"
                         + (" per frame" if series is not None else ""))
    calibration = _trimmed(scale if isinstance(scale, Calibration) else Calibration(scale), spatial_count)
    selected = None if channels is None else tuple(int(c) for c in channels)
    if series is not None:
        result = FrameSeries(series, channel_axis, path, calibration, handle, selected, gray)
        result.frame(0)  # checks the dtype, the channels and the extent now, once
        return result
    chunks = getattr(data, "chunksize", None) or getattr(data, "chunks", None)  # dask: chunksize
    spatial_chunks = None
    if isinstance(chunks, tuple) and len(chunks) == len(data.shape) and all(isinstance(c, int) for c in chunks):
        spatial_chunks = tuple(int(c) for i, c in enumerate(chunks) if i != channel_axis)
    return ImageSource(data, channel_axis, path, spatial_chunks, calibration.scale, handle, calibration.translation,
                       calibration.units, selected, gray)


def _channel_axis(data: Any, axes: str | None, channel_axis_meta: int | None, spatial_dims: int | None,
                  where: str) -> int | None:
    """The channel axis of one image (one frame): from ``axes``, else the file's metadata, else the default."""
    if axes is not None:
        channel_axis, parsed_dims = parse_axes(axes, len(data.shape))
        if spatial_dims is not None and parsed_dims != spatial_dims:
            raise ShapeError(f"axes {axes!r} give {parsed_dims} spatial dimensions, the model needs {spatial_dims}")
        return channel_axis
    if channel_axis_meta is not None:
        return channel_axis_meta if channel_axis_meta >= 0 else None
    return _default_channel_axis(len(data.shape), spatial_dims, where)


def _trimmed(calibration: Calibration, dims: int) -> Calibration:
    """The calibration of the last ``dims`` spatial axes (a TIFF records z, y and x even for a 2D image)."""
    def last(values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        return None if values is None else tuple(values[-dims:]) if len(values) >= dims else None
    return Calibration(last(calibration.scale), last(calibration.translation), last(calibration.units))


def _in_memory(source: Any, key: str | None) -> tuple[Any, int | None, str | None, Calibration | None]:
    """An array-like handed over in Python: numpy, zarr (array or OME-Zarr group), dask (read chunk by chunk,
    never whole), h5py, or a torch tensor (copied to the CPU)."""
    module = type(source).__module__
    if module.startswith("torch") and hasattr(source, "detach"):
        return source.detach().cpu().numpy(), None, None, None
    if module.startswith("zarr") and hasattr(source, "arrays") and not hasattr(source, "shape"):  # a zarr.Group
        array, channel_axis, _, calibration = _zarr_group(source, key, "the zarr group")
        return array, channel_axis, None, calibration
    if not hasattr(source, "shape") or not hasattr(source, "dtype"):
        raise DataError(f"expected an array (numpy, zarr, dask, h5py, torch) or a file path, got a "
                        f"{type(source).__name__}")
    return source, None, None, None


def _open_npy(path: Path) -> np.ndarray:
    """A memory-mapped .npy; never unpickled (object arrays are refused, not loaded)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise DataError(f"{str(path)!r} holds Python objects (a pickle), not an image: seamfree never unpickles "
                            "input files; save the image as a numeric array") from exc
        raise DataError(f"cannot read {str(path)!r} as .npy: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {str(path)!r} as .npy ({exc}); is it really a .npy file?") from exc


def _open_path(path: Path, key: str | None) -> tuple[Any, int | None, str, Calibration | None, Any]:
    """Return (array, channel axis from metadata or None (-1: known to have none), path, scale, handle)."""
    if not path.exists():
        raise DataError(f"input {str(path)!r} does not exist")
    name = path.name.lower()
    if key is not None and name.endswith((".npy", ".tif", ".tiff", *_PICTURES)):
        _no_members(path, key)
    if name.endswith(".npy"):
        return _open_npy(path), None, str(path), None, None
    if name.endswith((".tif", ".tiff")):
        array, handle = open_tiff(path)
        return array, tiff_channel_axis(path, array.ndim), str(path), tiff_calibration(path), handle
    if name.endswith(_PICTURES):
        return (*_open_picture(path), None)
    if name.endswith((".h5", ".hdf5", ".hdf", ".n5h5")):
        dataset = open_hdf5(path, key)
        return dataset, None, str(path), None, dataset.file
    if name.endswith(".zarr") or (path / "zarr.json").exists() or (path / ".zarray").exists():
        return (*_open_zarr(path, key), None)
    raise DataError(
        f"cannot tell the format of {str(path)!r}; supported: .npy, .zarr (OME-Zarr), .tif/.tiff, .h5/.hdf5, "
        ".png/.jpg (pictures)"
    )


def _no_members(path: Path, key: str) -> None:
    """A ``key`` (or series) given for a file that holds a single array: an error, not silently ignored."""
    raise DataError(f"{str(path)!r} holds a single array, so key/series {key!r} selects nothing (--key chooses a "
                    "dataset of an HDF5 file or an array of a zarr group, --series a series of a bioformats2raw "
                    "layout); leave the option out")


_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _open_picture(path: Path) -> tuple[Any, int | None, str, Calibration | None]:
    """A PNG/JPEG/... picture, read whole through imageio (pictures fit in memory); RGB(A) as channels."""
    imageio = require("imageio", "plot")
    try:
        data = np.asarray(imageio.v3.imread(path))  # type: ignore[attr-defined]
    except Exception as exc:  # truncated, not a picture: imageio's plugins fail in many ways
        raise DataError(f"cannot read {str(path)!r} as a picture ({type(exc).__name__}: {exc}); check the "
                        "file") from exc
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        return data, data.ndim - 1, str(path), None  # height, width, RGB(A): channels last
    return data, -1, str(path), None


def _open_zarr(path: Path, key: str | None) -> tuple[Any, int | None, str, Calibration | None]:
    zarr = require("zarr", "zarr")
    try:
        node = zarr.open(str(path), mode="r")  # type: ignore[attr-defined]
    except Exception as exc:  # zarr raises several unrelated types for unreadable stores
        raise DataError(f"cannot open {str(path)!r} as zarr: {exc}") from exc
    if isinstance(node, zarr.Array):  # type: ignore[attr-defined]
        if key is not None:
            _no_members(path, key)
        _warn_missing_chunks(node, str(path))
        return node, None, str(path), None
    opened = _zarr_group(node, key, str(path))
    _warn_missing_chunks(opened[0], opened[2])
    return opened


def _open_url(url: str, key: str | None) -> tuple[Any, int | None, str, Calibration | None]:
    """An OME-Zarr (or zarr) store at a URL (``https://``, ``s3://``, ...), read through fsspec."""
    zarr = require("zarr", "zarr")
    options: dict[str, Any] = {}
    if url.startswith(("http://", "https://")):
        try:
            import aiohttp
        except ImportError as exc:
            raise DataError(f"reading {url!r} needs fsspec and aiohttp: pip install 'seamfree[remote]'") from exc
        options = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=URL_TIMEOUT, connect=URL_TIMEOUT / 6)}}
    try:
        node = zarr.open(url, mode="r", storage_options=options)  # type: ignore[attr-defined]
    except ImportError as exc:
        raise DataError(f"reading {url!r} needs fsspec and the file system of its scheme ({exc}); e.g. "
                        "pip install 'seamfree[remote]' for http(s), s3fs for s3://") from exc
    except Exception as exc:  # connection refused, unknown host, 404, not a zarr store: one line, not a traceback
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot open {url!r} as OME-Zarr ({type(exc).__name__}: {reason}); check the URL and that "
                        "the server is reachable") from exc
    if isinstance(node, zarr.Array):  # type: ignore[attr-defined]
        return node, None, url, None
    return _zarr_group(node, key, url.rstrip("/"))


def _bioformats2raw_series(group: Any, attrs: dict[str, Any]) -> list[str] | None:
    """The series of a bioformats2raw layout (None: the group is not one): the ``OME`` group's list, else the
    numbered subgroups."""
    if "bioformats2raw.layout" not in attrs and "bioformats2raw.layout" not in attrs.get("ome", {}):
        return None
    listed = None
    if "OME" in group:
        ome = dict(group["OME"].attrs)
        listed = ome.get("series", ome.get("ome", {}).get("series"))
    if listed:
        return [str(name) for name in listed]
    return sorted((name for name, _ in group.groups() if name.isdigit()), key=int)


def _zarr_group(group: Any, key: str | None, where: str) -> tuple[Any, int | None, str, Calibration | None]:
    """Level 0 of the OME-Zarr image in ``group`` (or in its member ``key``: a series of a bioformats2raw layout,
    an image subgroup), or the array ``key``."""
    attrs = dict(group.attrs)
    series = _bioformats2raw_series(group, attrs)
    if series is not None:
        if not series:
            raise DataError(f"{where} is a bioformats2raw layout without any series")
        if key is None:
            key = series[0]
            if len(series) > 1:
                logger.info("%s holds %d series; reading series %s (CLI --series N for another)", where,
                            len(series), key)
        elif key not in series:
            raise DataError(f"{where} has no series {key}: it holds {len(series)} series "
                            f"({', '.join(series[:8])}{', ...' if len(series) > 8 else ''}); choose one with "
                            "--series N")
    multiscales = ome_multiscales(attrs)
    if key is None and multiscales:
        return _open_ome_level0(group, multiscales, where)
    arrays = [name for name, _ in group.arrays()]
    images = [name for name, sub in group.groups() if ome_multiscales(dict(sub.attrs))]
    if key is None and len(arrays) + len(images) == 1:
        key = (arrays or images)[0]
    if key in images:
        sub = group[key]
        return _open_ome_level0(sub, ome_multiscales(dict(sub.attrs)), f"{where}/{key}")
    if key is None or key not in arrays:
        found = arrays + [f"{name}/ (image)" for name in images]
        raise DataError(f"{where} is a zarr group holding {found}; choose one with key=... (CLI --key)")
    return group[key], None, f"{where}/{key}", None


_LISTING_CAP = 2_000_000  # files counted at most (beyond: "many", never a hang)


def _stored_files(folder: Path) -> int:
    """How many chunk (or shard) files the local array folder holds, metadata excluded, counted up to a cap."""
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(1 for name in files if name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"))
        if count >= _LISTING_CAP:
            break
    return count


def _warn_missing_chunks(array: Any, where: str) -> None:
    """Say so when chunks of a zarr input are not stored: zarr reads them as the fill value, without a word; and
    refuse metadata that claims far more than the store holds (a 60 KB store claiming 10^14 voxels).

    (A writer may leave out chunks that hold only the fill value; a lost chunk looks the same.) Stored chunks are
    counted by listing the local folder (asking zarr would try every possible chunk key: hours for such claims).
    """
    folder = Path(where)
    try:
        unit = getattr(array, "shards", None) or array.chunks
        total = math.prod(-(-int(n) // int(c)) for n, c in zip(array.shape, unit))
    except Exception:  # not a chunked array as zarr describes one: nothing to say
        return
    if not folder.is_dir() or total == 0:
        return
    stored = _stored_files(folder)
    if total >= 1_000_000 and stored * 10_000 < total:
        voxels = math.prod(int(n) for n in array.shape)
        raise DataError(
            f"the input {where} claims shape {tuple(array.shape)} ({voxels:.3g} voxels, {total} chunk files) but "
            f"stores {stored} of them: its metadata claims far more than the store holds (a damaged or partial "
            "copy, or wrong metadata); check the shape in its zarr.json, or crop the stored region into an image "
            "of its own")
    if stored < total:
        logger.warning("%d of %d chunks of the input %s are not stored: they are read as the fill value %s "
                       "(regions never written, or chunks lost); check the input if that is unexpected", total - stored,
                       total, where, getattr(array, "fill_value", 0))


def ome_multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    ome = attrs.get("ome", attrs)  # OME-Zarr 0.5 nests under "ome"; 0.4 has it at the top level
    multiscales = ome.get("multiscales", []) if isinstance(ome, dict) else []
    if not isinstance(multiscales, list):
        raise DataError(f"the OME-Zarr metadata 'multiscales' is a {type(multiscales).__name__}, not a list; the "
                        "store's zarr.json (or .zattrs) is malformed: rewrite it, or open the array by --key")
    return multiscales


def ome_datasets(image: Any, path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The datasets (levels) of an OME-Zarr image and its axis names, checked: every dataset a path inside the
    store (relative, without ``..``), axes a list; DataError naming what is malformed."""
    datasets = image.get("datasets") if isinstance(image, dict) else None
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
        raise DataError(f"{path!r}: its OME-Zarr multiscales list no datasets (got {datasets!r:.80}); the "
                        "metadata is malformed: rewrite it, or open the array by --key")
    for level in datasets:
        name = level.get("path")
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/") \
                or "." in name.split("/"):
            raise DataError(f"{path!r}: the OME-Zarr dataset path {name!r} is not a path inside the store "
                            "(absolute, empty or with '..'); seamfree reads only arrays inside the store: fix the "
                            "metadata")
    raw_axes = image.get("axes", [])
    if not isinstance(raw_axes, list):
        raise DataError(f"{path!r}: the OME-Zarr axes are {raw_axes!r:.80}, not a list; fix the metadata")
    return datasets, [str(a.get("name")) if isinstance(a, dict) else str(a) for a in raw_axes]


def _level0(image: Any, path: str) -> tuple[dict[str, Any], list[str]]:
    datasets, axes = ome_datasets(image, path)
    return datasets[0], axes


def _open_ome_level0(
    group: Any, multiscales: list[dict[str, Any]], path: str
) -> tuple[Any, int | None, str, Calibration]:
    image = multiscales[0]
    level0, axes = _level0(image, path)
    try:
        array = group[level0["path"]]
    except KeyError as exc:
        raise DataError(f"{path!r}: its OME-Zarr metadata names the dataset {level0['path']!r}, which the store does "
                        "not hold (a partial copy?); copy the whole store, or fix the metadata") from exc
    calibration = read_calibration(image, level0)
    if "t" in axes:
        if axes.index("t") != 0:
            raise ShapeError(f"{path!r} has its time axis at position {axes.index('t')} (axes {axes}); OME-NGFF "
                             "puts it first: rewrite the image with t as the first axis")
        axes = axes[1:]
        array = TimeSeries(array, time_calibration(image, level0))
    channel_axis = axes.index("c") if "c" in axes else -1
    if not axes:
        channel_axis = 0 if array.ndim == 4 else -1
    logger.debug("OME-Zarr %s: level 0 %s, axes %s, %s", path, level0["path"], axes, calibration)
    return array, channel_axis, f"{path}/{level0['path']}", calibration
