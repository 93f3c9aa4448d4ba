"""What a reader hands to the engine: an :class:`ImageSource` (one image, read lazily, channel-first
``(C, *spatial)``) or a :class:`FrameSeries` (a time series, one :class:`ImageSource` per frame), and the axis
strings that say which stored axis is which (``"ZYX"``, ``"YXC"``, ``"TCYX"``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from seamfree.errors import DataError, ShapeError
from seamfree.io.ome import Calibration, TimeCalibration

__all__ = ["SUPPORTED_DTYPES", "FrameSeries", "ImageSource", "TimeSeries", "parse_axes", "split_time"]

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (
    "bool", "uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32", "float64",
))
_SPATIAL = "ZYX"


def parse_axes(axes: str, ndim: int) -> tuple[int | None, int]:
    """Return ``(channel_axis, spatial_dims)`` for an axis string like ``"CZYX"``, ``"YXC"`` or ``"ZYX"``.

    A leading ``T`` (time, ``"TYX"``, ``"TCZYX"``) is not part of a frame: see :func:`split_time`.
    """
    upper = axes.upper()
    if "T" in upper and not upper.startswith("T"):
        raise ShapeError(f"axes {axes!r}: the time axis T must come first (e.g. 'TYX', 'TCZYX'); transpose the "
                         "array first")
    if "T" in upper:
        raise ShapeError(f"axes {axes!r} have a time axis where one frame is expected: seamfree predict predicts "
                         "a series frame by frame; for the other commands select one frame first")
    if len(upper) != ndim or len(set(upper)) != ndim or not set(upper) <= set("CZYX"):
        raise ShapeError(
            f"axes {axes!r} do not describe an array with {ndim} dimensions; use one letter per dimension from "
            "T (time, first), C (channel), Z, Y, X, e.g. 'ZYX', 'CYX', 'YXC' or 'TYX'"
        )
    spatial = [a for a in upper if a != "C"]
    if "".join(spatial) != _SPATIAL[-len(spatial):]:
        raise ShapeError(f"spatial axes must be in z, y, x order, got {axes!r}; transpose the array first")
    return (upper.index("C") if "C" in upper else None), len(spatial)


def split_time(axes: str | None) -> tuple[bool, str | None]:
    """``(has_time, frame_axes)``: whether ``axes`` starts with T (or B, a batch of independent images, as
    bioimage.io tensors have it: predicted one by one like frames), and the axes of one frame.

    >>> split_time("TCYX")
    (True, 'CYX')
    >>> split_time("BCYX")
    (True, 'CYX')
    >>> split_time("ZYX")
    (False, 'ZYX')
    """
    if axes is None or not axes.upper().startswith(("T", "B")):
        return False, axes
    return True, axes[1:]


class TimeSeries:
    """A stored array whose first axis is time: ``frame(t)`` is a lazy view of one frame (nothing is read)."""

    def __init__(self, data: Any, calibration: TimeCalibration | None = None) -> None:
        self.data = data
        self.calibration = calibration or TimeCalibration()
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)

    def frame(self, t: int) -> _Frame:
        return _Frame(self.data, t)


class _Frame:
    """Frame ``t`` of an array with a leading time axis, read only where it is sliced."""

    def __init__(self, data: Any, t: int) -> None:
        self.data, self.t = data, int(t)
        self.shape = tuple(int(s) for s in data.shape[1:])
        self.dtype = np.dtype(data.dtype)
        chunks = getattr(data, "chunksize", None) or getattr(data, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == len(data.shape) and all(isinstance(c, int) for c in chunks):
            self.chunks = tuple(chunks[1:])

    def __getitem__(self, key: Any) -> Any:
        return self.data[(self.t, *(key if isinstance(key, tuple) else (key,)))]


class _HoldsFile:
    """A source that may hold a file open (``handle``): ``close()`` it, or use it as a context manager."""

    handle: Any

    def close(self) -> None:
        """Close the file this source holds open (TIFF store, HDF5 file); a no-op for arrays."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FrameSeries(_HoldsFile):
    """An image with a time axis, predicted frame by frame (``seamfree predict --axes TYX``).

    Each :meth:`frame` is an :class:`ImageSource` of one time point, with the series' channel selection and
    calibration; ``frames`` is how many there are.
    """

    series: TimeSeries
    channel_axis: int | None
    path: str | None
    calibration: Calibration
    handle: Any = None
    channels: tuple[int, ...] | None = None
    gray: bool = False

    @property
    def frames(self) -> int:
        return self.series.shape[0]

    @property
    def time(self) -> TimeCalibration:
        return self.series.calibration

    def frame(self, t: int) -> ImageSource:
        if not 0 <= t < self.frames:
            raise ShapeError(f"frame {t} does not exist in {self.path or 'the input array'}, which has {self.frames}")
        view = self.series.frame(t)
        chunks = getattr(view, "chunks", None)
        spatial_chunks = None if chunks is None else tuple(c for i, c in enumerate(chunks) if i != self.channel_axis)
        c = self.calibration
        return ImageSource(view, self.channel_axis, None if self.path is None else f"{self.path} (frame {t})",
                           spatial_chunks, c.scale, None, c.translation, c.units, self.channels, self.gray)


@dataclass
class ImageSource(_HoldsFile):
    """A lazily read image, presented as channel-first ``(C, *spatial)``.

    Attributes
    ----------
    data : array-like
        The stored array (numpy, memmap, zarr, h5py dataset), sliced on demand.
    channel_axis : int or None
        Axis of ``data`` holding channels; None when the image has a single, implicit channel.
    path : str or None
        Where it was read from, for messages and fingerprints.
    spatial_chunks : tuple of int or None
        Chunk shape of the storage along the spatial axes, when chunked.
    scale : tuple of float or None
        Physical voxel size per spatial axis, when the format records it.
    channels : tuple of int or None
        The stored channels that are read, in this order (None: all).
    gray : bool
        Read the (selected) channels as one, their mean in the stored dtype (an RGB image as gray).
    """

    data: Any
    channel_axis: int | None
    path: str | None = None
    spatial_chunks: tuple[int, ...] | None = None
    scale: tuple[float, ...] | None = None
    handle: Any = None
    translation: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    channels: tuple[int, ...] | None = None
    gray: bool = False

    @property
    def calibration(self) -> Calibration:
        """Voxel size, origin and units of the spatial axes, as far as the file says."""
        return Calibration(self.scale, self.translation, self.units)


    def __post_init__(self) -> None:
        dtype = np.dtype(self.data.dtype)
        if dtype not in SUPPORTED_DTYPES:
            names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
            raise DataError(f"unsupported image dtype {dtype} in {self.where}; supported: {names}")
        if 0 in tuple(self.data.shape):
            raise DataError(f"the image {self.where} is empty (shape {tuple(self.data.shape)}); pass an image with at "
                            "least one voxel on every axis")
        stored = self.stored_channels
        if self.channels is not None and (not self.channels or any(not 0 <= c < stored for c in self.channels)):
            raise DataError(f"channels {list(self.channels)} do not exist in {self.where}, which has {stored} "
                            f"channel(s) (0..{stored - 1}); choose among them (CLI --channels)")

    @property
    def where(self) -> str:
        return repr(self.path) if self.path else "the input array"

    @property
    def stored_channels(self) -> int:
        """Channels in the file, before any selection."""
        return 1 if self.channel_axis is None else int(self.data.shape[self.channel_axis])

    @property
    def shape(self) -> tuple[int, ...]:
        """Channel-first shape ``(C, *spatial)`` as read (after the channel selection)."""
        shape = tuple(int(s) for s in self.data.shape)
        spatial = shape if self.channel_axis is None else tuple(s for i, s in enumerate(shape)
                                                                   if i != self.channel_axis)
        channels = 1 if self.gray else len(self.channels) if self.channels is not None else self.stored_channels
        return (channels, *spatial)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def spatial_dims(self) -> int:
        return len(self.shape) - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def read(self, window: Sequence[slice]) -> np.ndarray:
        """Return the region ``window`` (spatial slices) as a ``(C, *window)`` array in the stored dtype."""
        if len(window) != self.spatial_dims:
            raise ShapeError(f"window {tuple(window)} needs {self.spatial_dims} spatial slices")
        index: list[slice] = list(window)
        if self.channel_axis is not None:
            index.insert(self.channel_axis, slice(None))
        try:
            data = np.asarray(self.data[tuple(index)])
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a chunk that does not decode, a truncated file: the storage, not the caller
            region = [(w.start, w.stop) for w in window]
            raise DataError(f"cannot read the region {region} of the input {self.where}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}; the file may be corrupt or "
                            "truncated there") from exc
        data = data[np.newaxis] if self.channel_axis is None else np.moveaxis(data, self.channel_axis, 0)
        if self.channels is not None:
            data = data[list(self.channels)]
        if self.gray and data.shape[0] > 1:
            mean = data.mean(axis=0, keepdims=True, dtype=np.float64)
            data = (np.rint(mean) if np.issubdtype(data.dtype, np.integer) else mean).astype(data.dtype)
        return data

    def read_all(self) -> np.ndarray:
        """Return the whole image in memory (only for images that fit)."""
        return self.read(tuple(slice(0, s) for s in self.spatial_shape))
