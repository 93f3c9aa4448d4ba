"""What each segmentation method reads from a prediction, block by block: its foreground mask, its seeds and its
flooding. Every step is a function of a block's window or crop, so the same code runs here and on dask workers.

- ``components``: connected components of ``foreground > threshold``.
- ``watershed``: seeds are the connected components of ``foreground − boundary > seed_threshold`` inside the
  mask; they flood the boundary map within the mask (``skimage.segmentation.watershed``). With a one-channel
  prediction, that channel is the boundary map (membranes) and the mask is the whole image.
- ``distance``: for foreground-only predictions: the Euclidean distance transform of the mask (anisotropic
  voxels weighted by their size, in voxels of the finest axis), seeds where it is maximal within
  ``min_distance`` voxels (and at least ``min_radius``), flooding ``−distance`` within the mask.

A prediction stored as uint8 holds probabilities × 255 (``seamfree predict --output-kind uint8``) and is read as
probabilities; a mask output (0/1) is read as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seamfree.errors import ConfigError, DataError, require
from seamfree.io.safety import file_identity
from seamfree.segment.blocks import BlockGrid, Window, cut_face_labels

__all__ = ["METHODS", "METHOD_KINDS", "Method", "MethodKind", "Prediction", "ranked"]


@dataclass(frozen=True)
class MethodKind:
    """What a segmentation method is, declared once (the driver, the CLI and napari read it).

    Attributes
    ----------
    name : str
    seeded : bool
        Seeds flooded within each block's crop (a halo of the largest object's extent); else connected
        components of the mask, exact without a halo.
    boundary : bool
        Reads a boundary channel (a one-channel prediction is a boundary map).
    distance : bool
        Seeds and relief from the distance transform of the mask (voxel size aware).
    summary : str
        One line for ``--help`` and napari.
    """

    name: str
    seeded: bool
    boundary: bool
    distance: bool
    summary: str


METHOD_KINDS: dict[str, MethodKind] = {kind.name: kind for kind in (
    MethodKind("components", seeded=False, boundary=False, distance=False,
               summary="connected components of foreground > threshold"),
    MethodKind("watershed", seeded=True, boundary=True, distance=False,
               summary="seeds foreground - boundary > seed threshold flood the boundary map within the mask (a "
                       "one-channel prediction is a boundary map)"),
    MethodKind("distance", seeded=True, boundary=False, distance=True,
               summary="distance-transform watershed of the foreground"),
)}
METHODS = tuple(METHOD_KINDS)

# open sources per process (a dask worker reads many blocks of one prediction)
_SOURCES: dict[tuple[Any, ...], Any] = {}


@dataclass(frozen=True)
class Prediction:
    """A prediction ``(C, *spatial)`` read window by window, as float32 probabilities; picklable (a path) unless
    it is an array in memory."""

    path: str | None
    key: str | None
    spatial_dims: int
    channels: int
    divisor: float
    source: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        if self.path is None:
            raise ConfigError("a prediction held in memory cannot be segmented on dask workers; write it to an "
                              "OME-Zarr first (seamfree predict ... OUT.zarr) and segment that")
        return {**self.__dict__, "source": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _source(self) -> Any:
        if self.source is not None:
            return self.source
        key = (str(self.path), file_identity(self.path), self.key, self.spatial_dims)
        if key not in _SOURCES:
            from seamfree.io.readers import open_image

            for stale in [k for k in _SOURCES if k[0] == str(self.path)]:  # replaced at the same path
                _SOURCES.pop(stale).close()
            _SOURCES[key] = open_image(self.path, key=self.key, spatial_dims=self.spatial_dims)
        return _SOURCES[key]

    def read(self, window: Window) -> np.ndarray:
        values = self._source().read(window).astype(np.float32)
        if not np.isfinite(values).all():
            raise DataError(f"the prediction {self.path or 'array'} holds NaN or Inf values in the block {window}; "
                            "a segmentation of them would be arbitrary: check the model's output (or clean it, "
                            "e.g. numpy.nan_to_num) and segment again")
        return values / self.divisor if self.divisor != 1 else values


@dataclass(frozen=True)
class Method:
    """A method with its parameters (see the module docstring); callables of blocks for the driver."""

    name: str
    prediction: Prediction
    foreground: int | None
    boundary: int | None
    threshold: float = 0.5
    seed_threshold: float = 0.5
    min_distance: int = 3
    min_radius: float = 1.0
    sampling: tuple[float, ...] | None = None
    connectivity: int = 1

    @property
    def kind(self) -> MethodKind:
        """What this method is (:data:`METHOD_KINDS`)."""
        return METHOD_KINDS[self.name]

    @property
    def reach(self) -> int:
        """Voxels beyond an object that its seeds depend on (the distance method's maximum filter)."""
        return self.min_distance if self.kind.distance else 0

    def mask(self, values: np.ndarray) -> np.ndarray:
        if self.foreground is None:
            return np.ones(values.shape[1:], bool)
        return values[self.foreground] > self.threshold

    def mask_of_block(self, grid: BlockGrid, index: tuple[int, ...]) -> np.ndarray:
        """The foreground of a block's window (what ``components`` labels)."""
        return self.mask(self.prediction.read(grid.window(index)))

    def seeds_of_block(self, grid: BlockGrid, index: tuple[int, ...]) -> np.ndarray:
        """The seed voxels of a block's window, computed on its crop."""
        if self.kind.boundary:
            values = self.prediction.read(grid.window(index))
            foreground = values[self.foreground] if self.foreground is not None else 1.0
            return (foreground - values[self.boundary] > self.seed_threshold) & self.mask(values)
        crop = grid.crop(index)
        mask = self.mask(self.prediction.read(crop))
        distance = self._distance(mask)
        ndimage: Any = require("scipy.ndimage", "segment")
        peaks = distance == ndimage.maximum_filter(distance, size=2 * self.min_distance + 1, mode="constant")
        return (peaks & (distance >= self.min_radius) & mask)[grid.core_in_crop(index)]

    def _distance(self, mask: np.ndarray) -> np.ndarray:
        ndimage: Any = require("scipy.ndimage", "segment")
        return ndimage.distance_transform_edt(mask, sampling=self.sampling).astype(np.float32)

    def flood(self, grid: BlockGrid, index: tuple[int, ...], markers: np.ndarray) -> tuple[np.ndarray, int]:
        """Labels of the block's window from the object ids ``markers`` of its crop, and how many of its voxels
        belong to regions that reach a cut face of the crop (not verified exact)."""
        skimage: Any = require("skimage.segmentation", "segment")
        ndimage: Any = require("scipy.ndimage", "segment")
        from seamfree.segment.components import structure

        crop = grid.crop(index)
        values = self.prediction.read(crop)
        mask = self.mask(values)
        relief = values[self.boundary] if self.kind.boundary else -self._distance(mask)
        neighbourhood = structure(len(crop), self.connectivity)
        labels = skimage.watershed(ranked(relief, crop, grid.shape), markers=markers, mask=mask,
                                   connectivity=neighbourhood)
        regions, _ = ndimage.label(mask, structure=neighbourhood)
        open_regions = np.isin(regions, cut_face_labels(regions, crop, grid.shape))
        if self.reach and open_regions.any():  # seeds look min_distance voxels around them
            open_regions = ndimage.maximum_filter(open_regions, size=2 * self.reach + 1)
        core = grid.core_in_crop(index)
        return labels[core], int(np.count_nonzero(open_regions[core] & mask[core]))


def ranked(relief: np.ndarray, window: Window, shape: tuple[int, ...]) -> np.ndarray:
    """The rank of every voxel of ``relief`` (the ``window`` of an image of ``shape``) by (value, raster position
    in the image): the same order as the values, with ties broken by position.

    A watershed depends only on the order of its relief, and ``skimage.segmentation.watershed`` breaks ties by
    the order of its heap, which depends on everything else in the array: flooding ranks instead makes the result
    of a crop equal that of the whole image for every region inside the crop.

    Examples
    --------
    >>> ranked(np.array([[0.5, 0.1], [0.5, 0.1]]), (slice(0, 2), slice(0, 2)), (2, 2)).tolist()
    [[2, 0], [3, 1]]
    """
    position = np.ravel_multi_index(np.meshgrid(*(np.arange(w.start, w.stop) for w in window), indexing="ij",
                                                sparse=True), shape)
    order = np.lexsort((np.broadcast_to(position, relief.shape).ravel(), relief.ravel()))
    ranks = np.empty(relief.size, np.int64)
    ranks[order] = np.arange(relief.size)
    return ranks.reshape(relief.shape)
