"""Input intensity normalization with statistics of the whole image, computed once, streamed over chunks.

Per-tile normalization is a classic source of tiling artifacts (each tile gets its own contrast), so it
exists only as the explicit ``"per_tile"`` method, to demonstrate the artifact.

Streaming: the image is visited slab by slab (slabs aligned with its storage chunks). Mean/std are exact
(float64 sums over every voxel). Percentiles are exact for 8- and 16-bit integer images (a histogram of every
voxel); for other dtypes they come from a deterministic sample: every slab contributes an evenly strided
subset of its voxels, about ``max_samples`` voxels in total, which bounds memory and reads every slab once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from seamfree.errors import ConfigError, DataError
from seamfree.io.readers import ImageSource

__all__ = ["IntensityNormalization", "SlabStatistics", "compute_normalization", "iter_slabs"]

Method = Literal["auto", "percentile", "meanstd", "none", "per_tile"]
METHODS = ("auto", "percentile", "meanstd", "none", "per_tile")
DEFAULT_SLAB_VOXELS = 1 << 22


@dataclass(frozen=True)
class IntensityNormalization:
    """How to map raw intensities to network inputs: ``(x - offset) / scale`` per channel.

    Attributes
    ----------
    method : {"auto", "percentile", "meanstd", "none", "per_tile"}
        ``auto`` (the default of predict and diagnose): what the model declares (a bioimage.io package's
        preprocessing), else ``percentile``; resolved by :func:`resolve_normalization`, the same for the CLI,
        napari and Python. ``percentile``: offset = low percentile, scale = high − low percentile; ``meanstd``:
        mean and std; ``none``: raw values as float32; ``per_tile``: percentiles of each tile (shows the artifact).
    low, high : float
        Percentiles for the percentile method.
    offset, scale : tuple of float, optional
        Per-channel statistics; computed from the image by :func:`compute_normalization` when None.
    """

    method: Method = "percentile"
    low: float = 1.0
    high: float = 99.8
    offset: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"normalization method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= self.low < self.high <= 100:
            raise ConfigError(f"percentiles need 0 <= low < high <= 100, got low={self.low}, high={self.high}")
        if (self.offset is None) != (self.scale is None):
            raise ConfigError("give both offset and scale, or neither")
        if self.scale is not None and any(s <= 0 or not math.isfinite(s) for s in self.scale):
            raise ConfigError(f"normalization scale must be positive and finite, got {self.scale}")

    @property
    def resolved(self) -> bool:
        """Whether the statistics are known (or not needed)."""
        return self.method in ("none", "per_tile") or self.offset is not None

    def apply(self, tile: np.ndarray) -> np.ndarray:
        """Return ``tile`` (C, *spatial) normalized as float32."""
        check_float32_range(tile, "the input tile")
        x = tile.astype(np.float32, copy=False)
        if self.method == "none":
            return x
        if self.method == "per_tile":
            flat = x.reshape(x.shape[0], -1)
            lo, hi = np.percentile(flat, [self.low, self.high], axis=1)
            return _affine(x, lo, np.maximum(hi - lo, 1e-6))
        if self.offset is None or self.scale is None:
            raise ConfigError("normalization statistics are not computed; call compute_normalization first")
        if x is not tile:  # a copy of ours already: normalized in place (the same values, no temporaries)
            shape = (-1,) + (1,) * (x.ndim - 1)
            x -= np.asarray(self.offset).astype(np.float32).reshape(shape)
            x /= np.asarray(self.scale).astype(np.float32).reshape(shape)
            return x
        return _affine(x, np.asarray(self.offset), np.asarray(self.scale))

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "low": self.low, "high": self.high,
                "offset": list(self.offset) if self.offset else None,
                "scale": list(self.scale) if self.scale else None}


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(values: np.ndarray, where: str) -> None:
    """DataError when finite ``values`` lie beyond float32's range (networks compute in float32: they would
    become Inf, then NaN): the message gives the largest magnitude and how to rescale."""
    if values.dtype.kind != "f" or values.dtype.itemsize <= 4 or not values.size:
        return
    largest = float(np.abs(values).max())
    if largest > _FLOAT32_MAX:
        raise DataError(f"{where} holds values up to {largest:.3g}, beyond float32's range (±{_FLOAT32_MAX:.3g}) "
                        "in which networks compute; rescale the image (e.g. divide it by its maximum) and save it "
                        "as float32")


def _affine(x: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (x.ndim - 1)
    return ((x - offset.astype(np.float32).reshape(shape)) / scale.astype(np.float32).reshape(shape)).astype(
        np.float32, copy=False
    )


def iter_slabs(source: ImageSource, slab_voxels: int = DEFAULT_SLAB_VOXELS) -> Iterator[tuple[slice, ...]]:
    """Yield spatial windows covering the image, aligned with its storage chunks when it has them."""
    shape = source.spatial_shape
    if source.spatial_chunks:
        slab = list(source.spatial_chunks)
    else:
        slab = [1] * len(shape)
        slab[-1] = shape[-1]
    # Grow along the leading axes (whole chunks at a time) until a slab holds about slab_voxels.
    for axis in reversed(range(len(shape))):
        while math.prod(slab) * 2 <= slab_voxels and slab[axis] < shape[axis]:
            slab[axis] = min(shape[axis], slab[axis] * 2)
    starts = [range(0, s, b) for s, b in zip(shape, slab)]
    for origin in itertools.product(*starts):
        yield tuple(slice(o, min(o + b, s)) for o, b, s in zip(origin, slab, shape))


def resolve_normalization(normalization: IntensityNormalization, model: Any = None) -> IntensityNormalization:
    """``normalization`` with ``auto`` replaced by what ``model`` declares (a bioimage.io package's
    preprocessing), else by percentiles with its ``low``/``high``; other methods as they are."""
    if normalization.method != "auto":
        return normalization
    from seamfree.models.bioimageio import package_info  # models import torch; this module does not

    declared = package_info(model) if model is not None else None
    if declared is not None and declared.normalization is not None:
        return IntensityNormalization(**declared.normalization)
    return IntensityNormalization("percentile", normalization.low, normalization.high, normalization.offset,
                                  normalization.scale)


def compute_normalization(
    source: ImageSource,
    normalization: IntensityNormalization | None = None,
    *,
    max_samples: int = 4_000_000,
) -> IntensityNormalization:
    """Return ``normalization`` with per-channel statistics computed from the whole image in one pass.

    Also the place where NaN/Inf inputs are found: a non-finite voxel raises DataError naming its slab.
    """
    normalization = resolve_normalization(normalization or IntensityNormalization())  # "auto" without a model
    if normalization.resolved:
        return normalization
    statistics = SlabStatistics.for_source(source, max_samples)
    for window in iter_slabs(source):
        statistics.add(source, window)
    return statistics.finish(normalization)


class SlabStatistics:
    """Per-channel intensity statistics accumulated slab by slab (sums, histogram or sample).

    ``add`` one slab at a time, or ``merge`` the statistics of single slabs computed elsewhere (a dask
    worker) in slab order: the result is then identical to one sequential pass.
    """

    def __init__(self, channels: int, total: int, exact_histogram: bool, stride: int) -> None:
        self.channels, self.total, self.stride = channels, total, stride
        self.sums = np.zeros(channels)
        self.squares = np.zeros(channels)
        self.histograms = np.zeros((channels, 1 << 16), dtype=np.int64) if exact_histogram else None
        self.samples: list[np.ndarray] = []

    @classmethod
    def for_source(cls, source: ImageSource, max_samples: int = 4_000_000) -> SlabStatistics:
        """Return empty statistics for ``source`` (exact histograms for 8/16-bit images)."""
        total = math.prod(source.spatial_shape)
        exact = source.dtype in (np.dtype("uint8"), np.dtype("uint16"), np.dtype("bool"))
        return cls(source.shape[0], total, exact, max(1, total // max_samples))

    def add(self, source: ImageSource, window: tuple[slice, ...]) -> None:
        """Add the voxels of ``window``; DataError naming the slab if it holds NaN or Inf."""
        slab = source.read(window).reshape(self.channels, -1)
        if slab.dtype.kind == "f" and not np.isfinite(slab).all():
            raise DataError(
                f"the input {source.where} contains NaN or Inf values in the region {window}; "
                "clean or mask them before prediction (e.g. numpy.nan_to_num)"
            )
        check_float32_range(slab, f"{source.where} in the region {window}")
        if self.histograms is not None:  # 8/16-bit: the histogram holds the sums too (see finish)
            for c in range(self.channels):
                counts = np.bincount(slab[c].view(np.uint8) if slab.dtype == bool else slab[c], minlength=1 << 16)
                self.histograms[c] += counts[: 1 << 16]
            return
        values = slab.astype(np.float64)
        self.sums += values.sum(axis=1)
        self.squares += np.square(values).sum(axis=1)
        self.samples.append(slab[:, ::self.stride].astype(np.float32))

    def merge(self, other: SlabStatistics) -> None:
        """Add statistics computed on other slabs."""
        self.sums += other.sums
        self.squares += other.squares
        if self.histograms is not None and other.histograms is not None:
            self.histograms += other.histograms
        self.samples.extend(other.samples)

    def finish(self, normalization: IntensityNormalization) -> IntensityNormalization:
        """Return ``normalization`` with the offset and scale these statistics give."""
        if self.histograms is not None:
            levels = np.arange(1 << 16, dtype=np.float64)
            self.sums = np.asarray(self.histograms @ levels, dtype=np.float64)
            self.squares = np.asarray(self.histograms @ np.square(levels), dtype=np.float64)
        mean = self.sums / self.total
        std = np.sqrt(np.maximum(self.squares / self.total - mean**2, 0.0))
        if normalization.method == "meanstd":
            offset, scale = mean, np.maximum(std, 1e-6)
        else:
            if self.histograms is not None:
                lo = np.array([_histogram_percentile(h, normalization.low) for h in self.histograms])
                hi = np.array([_histogram_percentile(h, normalization.high) for h in self.histograms])
            else:
                sample = np.concatenate(self.samples, axis=1)
                lo, hi = np.percentile(sample, [normalization.low, normalization.high], axis=1)
            offset, scale = lo, np.maximum(hi - lo, 1e-6)
        return IntensityNormalization(
            normalization.method, normalization.low, normalization.high,
            tuple(float(v) for v in offset), tuple(float(v) for v in scale),
        )


def _histogram_percentile(histogram: np.ndarray, q: float) -> float:
    """Return the q-th percentile of the values counted in ``histogram`` (numpy's 'linear' definition)."""
    cumulative = np.cumsum(histogram)
    count = int(cumulative[-1])
    rank = q / 100 * (count - 1)
    below, above = math.floor(rank), math.ceil(rank)
    v_below = int(np.searchsorted(cumulative, below, side="right"))
    v_above = int(np.searchsorted(cumulative, above, side="right"))
    return v_below + (v_above - v_below) * (rank - below)


# Deprecated names (deleted in seamfree 0.2.0, _version.REMOVED_IN): a *block* is a region of the output;
# statistics are read in slabs.
BlockStatistics = SlabStatistics
iter_blocks = iter_slabs
