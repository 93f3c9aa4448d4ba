"""Where tile predictions go: crop each tile to its core (exact), or blend overlapping cores (bounded buffer).

A sink is the stitching half of the engine. It says which tiles it still needs (resume), takes each tile's
prediction of its whole read window, converts it to the stored kind and writes it to an output target, marking
every written block done only after its data is written. A *block* is what one done marker stands for: a core
in crop stitching, a blend cell (a region between core boundaries) in blend stitching.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from seamfree.io.readers import ImageSource
from seamfree.io.writers import OutputTarget, block_digest
from seamfree.tiling.blend import BlendAccumulator, BlendWindow
from seamfree.tiling.engine import input_digest, read_window
from seamfree.tiling.grid import Tile, TileGrid
from seamfree.tiling.plan import PredictionPlan
from seamfree.tiling.specs import OutputSpec
from seamfree.tiling.stitching import stitching

__all__ = ["BlendSink", "CropSink", "TileSink", "sink_for"]

logger = logging.getLogger(__name__)


class TileSink(ABC):
    """Takes tile predictions in any order; :meth:`finish` once all of them were added."""

    records_inputs = False  # whether :meth:`add` keeps input digests (only then does the engine compute them)

    @abstractmethod
    def pending(self, tiles: Sequence[Tile]) -> list[Tile]:
        """Return the tiles of ``tiles`` whose predictions are still needed (the others are written)."""

    @abstractmethod
    def add(self, tile: Tile, prediction: np.ndarray, input_digest: str | None = None) -> None:
        """Take the prediction ``(C, *tile.read)`` of ``tile``'s whole read window (``input_digest``: of the raw
        input it was predicted from, recorded so that a resume sees a changed input)."""

    def input_digest(self, tile: Tile) -> str | None:
        """The input digest recorded when ``tile`` was written (None: unknown, or the sink keeps none)."""
        return None

    def forget(self, tile: Tile) -> None:  # noqa: B027  (sinks without per-tile records keep nothing)
        """Make a written tile pending again (its input changed)."""

    def finish(self) -> None:  # noqa: B027  (most sinks have nothing left to do)
        """Called after the last tile; a sink that buffers writes what it holds."""


class CropSink(TileSink):
    """Crop stitching: each tile writes its core and marks it done (the block id is the tile index)."""

    def __init__(self, target: OutputTarget, output: OutputSpec) -> None:
        self.target = target
        self.output = output
        self.records_inputs = target.records_inputs

    def pending(self, tiles: Sequence[Tile]) -> list[Tile]:
        return [tile for tile in tiles if not self.target.is_done(tile.index)]

    def add(self, tile: Tile, prediction: np.ndarray, input_digest: str | None = None) -> None:
        data = self.output.convert(prediction[(slice(None), *tile.crop)])
        self.target.write(tile.write, data)
        self.target.mark_done(tile.index, _record(tile.write, data, input_digest))

    def input_digest(self, tile: Tile) -> str | None:
        return self.target.input_digest(tile.index)

    def forget(self, tile: Tile) -> None:
        self.target.forget(tile.index)


class BlendSink(TileSink):
    """Blend stitching: weighted cores summed per cell; a cell is written and marked done when complete.

    The done marker of a cell is its origin, so blend outputs never mix with crop outputs' tile-index markers. It
    records the digest of the inputs of every tile that contributes to the cell; with ``source``, a resume
    compares them with the input as it is now and predicts again the cells whose input changed (and the tiles
    they need), as crop outputs do per block.
    """

    def __init__(self, grid: TileGrid, target: OutputTarget, output: OutputSpec, channels: int,
                 window: BlendWindow, source: ImageSource | None = None) -> None:
        self.target = target
        self.output = output
        self.source = source
        self.records_inputs = target.records_inputs
        self.accumulator = BlendAccumulator(grid, channels, window, self._emit, keep_contributors=self.records_inputs)
        self._digests: dict[tuple[int, ...], str | None] = {}
        self.accumulator.skip_done(self._is_done)

    def _cell_inputs(self, cell: tuple[slice, ...], read: bool) -> str | None:
        """The digest of the inputs of the tiles of ``cell``: as predicted (``read`` False), or as they are now."""
        digest = hashlib.sha256()
        for tile in self.accumulator.contributors(cell):
            if read and tile.index not in self._digests:
                assert self.source is not None
                self._digests[tile.index] = input_digest(read_window(self.source, tile.read))
            value = self._digests.get(tile.index)
            if value is None:
                return None
            digest.update(f"{tile.index}:{value};".encode())
        return digest.hexdigest()

    def _is_done(self, cell: tuple[slice, ...]) -> bool:
        if not self.target.is_done(_cell_id(cell)):
            return False
        recorded = self.target.input_digest(_cell_id(cell))
        if recorded is None or self.source is None:
            return True
        if recorded == self._cell_inputs(cell, read=True):
            return True
        logger.warning("the input %s changed under the blended cell at %s already written: predicting it again",
                       self.source.where, _cell_id(cell))
        self.target.forget(_cell_id(cell))
        return False

    def _emit(self, cell: tuple[slice, ...], values: np.ndarray) -> None:
        data = self.output.convert(values)
        self.target.write(cell, data)
        inputs = self._cell_inputs(cell, read=False) if self.records_inputs else None
        self.target.mark_done(_cell_id(cell), _record(cell, data, inputs))

    def pending(self, tiles: Sequence[Tile]) -> list[Tile]:
        return [tile for tile in tiles if self.accumulator.needs(tile)]

    def add(self, tile: Tile, prediction: np.ndarray, input_digest: str | None = None) -> None:
        self._digests[tile.index] = input_digest
        self.accumulator.add(tile, prediction)


def _record(window: Sequence[slice], data: np.ndarray, input_digest: str | None) -> dict[str, object]:
    """A done marker's record: where the block is, the digest of its stored values, and of its input."""
    record: dict[str, object] = {"window": [[w.start, w.stop] for w in window], "sha256": block_digest(data)}
    if input_digest is not None:
        record["input_sha256"] = input_digest
    return record


def _cell_id(cell: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(w.start for w in cell)


def sink_for(plan: PredictionPlan, target: OutputTarget, source: ImageSource | None = None) -> TileSink:
    """Return the sink of ``plan``'s stitching writing to ``target`` (``source``: the input, whose blocks a resume
    of a blend output checks)."""
    if stitching(plan.stitching).overlap:
        return BlendSink(plan.grid, target, plan.output, plan.out_channels, plan.blend_window, source)
    return CropSink(target, plan.output)
