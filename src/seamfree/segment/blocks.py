"""The blocks of a blockwise segmentation: a regular grid over the spatial axes, each block with a halo clipped
to the image, and the faces between neighbouring blocks.

A *block* owns the output voxels of its window (one output chunk); its *crop* is the window grown by the halo on
every side where the image goes on. A face of a crop is *cut* when the image continues beyond it: a connected
region that reaches a cut face may go on outside the crop, so a result computed on the crop is verified only for
regions that touch no cut face.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from seamfree.errors import ConfigError

__all__ = ["BlockGrid", "cut_face_labels"]

Window = tuple[slice, ...]


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block`` voxels (the last ones smaller) over ``shape``, with ``halo`` voxels of context.

    Examples
    --------
    >>> grid = BlockGrid((100, 70), (64, 64), (8, 8))
    >>> grid.counts, len(grid)
    ((2, 2), 4)
    >>> grid.window((1, 0)), grid.crop((1, 0))
    ((slice(64, 100, None), slice(0, 64, None)), (slice(56, 100, None), slice(0, 70, None)))
    """

    shape: tuple[int, ...]
    block: tuple[int, ...]
    halo: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.shape) == len(self.block) == len(self.halo)):
            raise ConfigError(f"block {self.block} and halo {self.halo} need one value per spatial axis of "
                              f"{self.shape}")
        if min(self.block) < 1 or min(self.halo) < 0:
            raise ConfigError(f"block must be >= 1 and halo >= 0 voxels per axis, got block {self.block}, halo "
                              f"{self.halo}")

    @property
    def counts(self) -> tuple[int, ...]:
        """Blocks per axis."""
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block))

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        """Block indices in raster order (the order of their ids)."""
        return itertools.product(*(range(n) for n in self.counts))

    def number(self, index: Sequence[int]) -> int:
        """The raster position of block ``index``."""
        return int(np.ravel_multi_index(tuple(index), self.counts))

    def window(self, index: Sequence[int]) -> Window:
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block, self.shape))

    def crop(self, index: Sequence[int]) -> Window:
        return tuple(slice(max(w.start - h, 0), min(w.stop + h, s))
                     for w, h, s in zip(self.window(index), self.halo, self.shape))

    def core_in_crop(self, index: Sequence[int]) -> Window:
        """The block's window in the coordinates of its crop."""
        return tuple(slice(w.start - c.start, w.stop - c.start) for w, c in zip(self.window(index), self.crop(index)))


def cut_face_labels(labels: np.ndarray, crop: Window, shape: Sequence[int]) -> np.ndarray:
    """The labels (> 0) of ``labels`` (a labelled crop ``crop`` of an image of ``shape``) on the crop's cut faces:
    the regions that may continue outside the crop."""
    found: list[np.ndarray] = []
    for axis, (window, extent) in enumerate(zip(crop, shape)):
        for side, cut in ((0, window.start > 0), (-1, window.stop < extent)):
            if cut:
                found.append(np.unique(np.take(labels, [side], axis=axis)))
    values = np.unique(np.concatenate(found)) if found else np.zeros(0, labels.dtype)
    return values[values > 0]
