"""Blend stitching: weighted averages of overlapping cores, with a bounded buffer.

Blending hides seams but never removes their cause (see PAPER.md); it exists for models that cannot be
exact and to compare with MONAI/nnU-Net. The image is cut into *cells* by every core boundary; each cell is
covered by a fixed set of cores. A cell's weighted sum lives in memory only from the first tile that touches it
until the last one has been added, then it is normalized and written: there is never a full-image
accumulator, only the cells of the tiles in flight (about one row of tiles in raster order).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np

from seamfree.errors import ConfigError
from seamfree.tiling.grid import Tile, TileGrid

__all__ = ["BlendAccumulator", "BlendWindow", "weight_window"]

BlendWindow = Literal["linear", "gaussian"]

# MONAI's gaussian: sigma = 0.125 × window size; weights clamped away from 0 so borders stay defined.
GAUSSIAN_SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3


def _axis_weights(size: int, ramp: int, window: BlendWindow) -> np.ndarray:
    position = np.arange(size, dtype=np.float64) + 0.5
    if window == "linear":
        if ramp == 0:
            return np.ones(size)
        # Ramps of length `ramp` at both ends: neighbours overlapping by exactly `ramp` sum to 1.
        return np.clip(np.minimum(position, size - position) / ramp, MIN_WEIGHT, 1.0)
    if window == "gaussian":
        sigma = GAUSSIAN_SIGMA_SCALE * size
        return np.maximum(np.exp(-0.5 * ((position - size / 2) / sigma) ** 2), MIN_WEIGHT)
    raise ConfigError(f"blend window must be 'linear' or 'gaussian', got {window!r}")


def weight_window(core: Sequence[int], overlap: Sequence[int], window: BlendWindow = "linear") -> np.ndarray:
    """Return the float32 weights of one core, shape ``core``: separable, positive, largest in the middle.

    Examples
    --------
    >>> weight_window((4,), (2,), "linear").tolist()
    [0.25, 0.75, 0.75, 0.25]
    """
    weights = np.ones((), dtype=np.float64)
    for size, ramp in zip(core, overlap):
        weights = np.multiply.outer(weights, _axis_weights(size, ramp, window))
    return weights.astype(np.float32)


def _cuts(grid: TileGrid, axis: int) -> list[int]:
    points = {0, grid.image_shape[axis]}
    for _, _, write, _ in grid.axis_tiles(axis):
        points.update((write.start, write.stop))
    return sorted(points)


class BlendAccumulator:
    """Accumulate weighted tile predictions per cell and emit each cell once complete.

    Parameters
    ----------
    grid : TileGrid
        The grid whose tiles will be added (every tile exactly once).
    channels : int
        Output channels.
    window : {"linear", "gaussian"}
        Weight window over each core.
    emit : callable
        Called as ``emit(cell_window, cell_values)`` with normalized float32 values ``(C, *cell)``.
    """

    def __init__(
        self,
        grid: TileGrid,
        channels: int,
        window: BlendWindow,
        emit: Callable[[tuple[slice, ...], np.ndarray], None],
        keep_contributors: bool = False,
    ) -> None:
        self.grid = grid
        self.channels = channels
        self.weights = weight_window(grid.core, grid.overlap, window)
        self.emit = emit
        cuts = [_cuts(grid, axis) for axis in range(grid.spatial_dims)]
        self._cells_per_axis = [[slice(a, b) for a, b in itertools.pairwise(c)] for c in cuts]
        self._index_of_start = [{cell.start: i for i, cell in enumerate(cells)} for cells in self._cells_per_axis]
        self._pending: dict[tuple[int, ...], int] = {}
        self._contributors: dict[tuple[int, ...], list[Tile]] = {}
        for tile in grid.tiles():
            for cell in self._cells_of(tile):
                self._pending[cell] = self._pending.get(cell, 0) + 1
                if keep_contributors:
                    self._contributors.setdefault(cell, []).append(tile)
        self._sums: dict[tuple[int, ...], np.ndarray] = {}
        self._weight_sums: dict[tuple[int, ...], np.ndarray] = {}
        self.peak_buffered_voxels = 0

    def _cells_of(self, tile: Tile) -> Iterator[tuple[int, ...]]:
        ranges = []
        for axis, write in enumerate(tile.write):
            cells = self._cells_per_axis[axis]
            ranges.append([i for i, b in enumerate(cells) if b.start >= write.start and b.stop <= write.stop])
        return itertools.product(*ranges)

    def _cell_window(self, cell: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(self._cells_per_axis[axis][i] for axis, i in enumerate(cell))

    def contributors(self, window: tuple[slice, ...]) -> list[Tile]:
        """The tiles that contribute to the cell ``window`` (kept with ``keep_contributors``; else empty)."""
        cell = tuple(self._index_of_start[axis][w.start] for axis, w in enumerate(window))
        return self._contributors.get(cell, [])

    def skip_done(self, is_done: Callable[[tuple[slice, ...]], bool]) -> int:
        """Forget the cells for which ``is_done(cell_window)`` is true (resume); return how many."""
        done = [cell for cell in self._pending if is_done(self._cell_window(cell))]
        for cell in done:
            del self._pending[cell]
        return len(done)

    def needs(self, tile: Tile) -> bool:
        """Whether ``tile`` contributes to a cell not yet emitted."""
        return any(cell in self._pending for cell in self._cells_of(tile))

    def add(self, tile: Tile, prediction: np.ndarray) -> None:
        """Add one tile's prediction ``(C, *tile_shape)``; emit the cells it completes."""
        kept = prediction[(slice(None), *tile.crop)].astype(np.float32, copy=False)
        core_weights = self.weights[tuple(slice(w.start - c.start, w.stop - c.start)
                                          for w, c in zip(tile.write, tile.core))]
        for cell in self._cells_of(tile):
            if cell not in self._pending:
                continue  # emitted in an earlier run (resume)
            window = self._cell_window(cell)
            local = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(window, tile.write))
            weights = core_weights[local]
            if cell not in self._sums:
                self._sums[cell] = np.zeros((self.channels, *weights.shape), np.float32)
                self._weight_sums[cell] = np.zeros(weights.shape, np.float32)
            self._sums[cell] += kept[(slice(None), *local)] * weights
            self._weight_sums[cell] += weights
            self._pending[cell] -= 1
            if self._pending[cell] == 0:
                self._finish(cell, window)
        buffered = sum(w.size for w in self._weight_sums.values())
        self.peak_buffered_voxels = max(self.peak_buffered_voxels, buffered)

    def _finish(self, cell: tuple[int, ...], window: tuple[slice, ...]) -> None:
        values = self._sums.pop(cell) / self._weight_sums.pop(cell)
        del self._pending[cell]
        self.emit(window, values)

    @property
    def complete(self) -> bool:
        return not self._pending
