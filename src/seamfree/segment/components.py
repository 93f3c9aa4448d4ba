"""Blockwise connected components equal to the whole-image ``scipy.ndimage.label``, up to a permutation of ids.

Three steps, each resumable (a block's table file is its done marker) and each a list of block tasks that runs
here or on dask workers sharing the storage:

1. **label**: every block labels its own voxels (``scipy.ndimage.label``) into a scratch array (one chunk per
   block) and writes a small table: how many labels, their sizes and bounding boxes;
2. **faces**: every block reads the two voxel layers on each of its upper faces (one voxel wider for diagonal
   connectivity) and writes the pairs of provisional ids that touch across the face;
3. **merge**, on the driver, over those small tables only: the provisional ids are nodes, the pairs edges, and
   ``scipy.sparse.csgraph.connected_components`` finds the objects; they are numbered in the raster order of
   their first block, optionally without the objects smaller than ``min_size``.

A provisional id is ``offsets[block] + local label``; ``final[provisional]`` is the object's id (0: none).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import require
from seamfree.io.pyramid import Runner
from seamfree.segment.blocks import BlockGrid, Window

__all__ = ["Components", "blockwise_components", "global_labels", "prepare_scratch", "run_here", "structure"]

logger = logging.getLogger(__name__)

# a block's binary image: (grid, block index) -> bool array of the block's window
Binary = Callable[[BlockGrid, tuple[int, ...]], np.ndarray]

JOBS_PER_TASK = 4


def run_here(task: Callable[[list[Any]], Any], batches: list[list[Any]]) -> None:
    """The local :data:`~seamfree.io.pyramid.Runner`: every batch in this process, in order."""
    for batch in batches:
        task(batch)


def structure(ndim: int, connectivity: int) -> np.ndarray:
    """The neighbourhood of ``scipy.ndimage.label`` for ``connectivity`` 1 (faces) … ``ndim`` (corners)."""
    ndimage: Any = require("scipy.ndimage", "segment")
    return ndimage.generate_binary_structure(ndim, connectivity)


@dataclass(frozen=True)
class Components:
    """The objects of a blockwise labelling (see the module docstring)."""

    root: Path
    grid: BlockGrid
    offsets: np.ndarray  # per block in raster order: provisional id of its label 0
    final: np.ndarray  # provisional id -> object id (0: background or removed)
    objects: int
    sizes: np.ndarray  # object id - 1 -> voxels
    lower: np.ndarray  # object id - 1 -> first voxel of its bounding box, per axis
    upper: np.ndarray  # object id - 1 -> one past its last voxel, per axis

    @property
    def extents(self) -> np.ndarray:
        """Bounding-box extent of every object, per axis (voxels)."""
        return self.upper - self.lower


def global_labels(local: np.ndarray, window: Window, grid: BlockGrid, offsets: np.ndarray,
                  final: np.ndarray) -> np.ndarray:
    """Map the local labels ``local`` of ``window`` (which may span blocks) to object ids."""
    blocks = [np.arange(w.start, w.stop) // b for w, b in zip(window, grid.block)]
    numbers = np.ravel_multi_index(np.meshgrid(*blocks, indexing="ij", sparse=True), grid.counts)
    provisional = offsets[numbers] + local.astype(np.int64)
    return np.where(local > 0, final[provisional], 0)


def blockwise_components(root: Path, grid: BlockGrid, binary: Binary, *, connectivity: int = 1,
                         min_size: int = 0, run: Runner | None = None) -> Components:
    """Label the connected components of the binary image that ``binary`` gives block by block; scratch files
    (and done markers) under ``root``. Rerunning after a kill redoes only the blocks without a table."""
    run = run or run_here
    prepare_scratch(root, grid)
    todo = [index for index in grid if not _table(root, grid, index).exists()]
    run(partial(label_task, binary=binary, grid=grid, root=str(root), connectivity=connectivity), _batches(todo))
    counts, sizes, lower, upper = _read_tables(root, grid)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    _save_atomic(root / "offsets.npy", array=offsets)
    todo = [index for index in grid if not _pairs(root, grid, index).exists()]
    run(partial(faces_task, grid=grid, root=str(root), connectivity=connectivity), _batches(todo))
    return _merge(root, grid, offsets, sizes, lower, upper, min_size)


def prepare_scratch(root: Path, grid: BlockGrid) -> None:
    """The folders and scratch array of a blockwise pass under ``root`` (made once; tasks of a job array have it
    made under the output's lock before they write into it)."""
    for folder in ("tables", "pairs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _scratch_array(root, grid)


def _scratch_array(root: Path, grid: BlockGrid) -> None:
    """The scratch array of local labels (one chunk per block). A creation killed before its metadata reached
    the disk leaves a folder zarr cannot open: it is made again, and the tables that could refer to it go too."""
    zarr = require("zarr", "zarr")
    path = root / "local.zarr"
    if path.exists():
        try:
            zarr.open_array(str(path), mode="r")  # type: ignore[attr-defined]
            return
        except Exception:  # zarr raises several types for a folder without array metadata
            logger.info("scratch labels %s were not created completely: creating them again", path)
            shutil.rmtree(path)
            for folder in ("tables", "pairs"):
                for stale in (root / folder).iterdir():
                    stale.unlink()
    zarr.create_array(str(path), shape=grid.shape, chunks=grid.block,  # type: ignore[attr-defined]
                      dtype=np.uint32, fill_value=0)


def _batches(jobs: Sequence[Any]) -> list[list[Any]]:
    return [list(jobs[i:i + JOBS_PER_TASK]) for i in range(0, len(jobs), JOBS_PER_TASK)]


def _table(root: Path, grid: BlockGrid, index: Sequence[int]) -> Path:
    return root / "tables" / f"{grid.number(index)}.npz"


def _pairs(root: Path, grid: BlockGrid, index: Sequence[int]) -> Path:
    return root / "pairs" / f"{grid.number(index)}.npy"


def _save_atomic(path: Path, **arrays: Any) -> None:
    """``np.savez`` of ``arrays`` (``np.save`` of a lone ``array``) through a temporary file and a rename: a
    table that exists is whole (it is its block's done marker)."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        if set(arrays) == {"array"}:
            np.save(handle, arrays["array"])
        else:
            np.savez(handle, **arrays)
    os.replace(temporary, path)


def label_task(jobs: list[tuple[int, ...]], *, binary: Binary, grid: BlockGrid, root: str,
               connectivity: int) -> int:
    """A task: label the blocks ``jobs`` into the scratch array and write their tables; return how many."""
    zarr = require("zarr", "zarr")
    ndimage: Any = require("scipy.ndimage", "segment")
    local = zarr.open_array(str(Path(root) / "local.zarr"), mode="r+")  # type: ignore[attr-defined]
    neighbourhood = structure(len(grid.shape), connectivity)
    for index in jobs:
        window = grid.window(index)
        mask = np.asarray(binary(grid, index), dtype=bool)
        labels, count = ndimage.label(mask, structure=neighbourhood)
        local[window] = labels.astype(np.uint32)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        boxes = ndimage.find_objects(labels)
        lower = np.array([[s.start + w.start for s, w in zip(box, window)] for box in boxes], np.int64)
        upper = np.array([[s.stop + w.start for s, w in zip(box, window)] for box in boxes], np.int64)
        _save_atomic(_table(Path(root), grid, index), count=count, sizes=sizes,
                     lower=lower.reshape(count, len(window)), upper=upper.reshape(count, len(window)))
    return len(jobs)


def _read_tables(root: Path, grid: BlockGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    counts, sizes, lower, upper = [], [], [], []
    for index in grid:
        with np.load(_table(root, grid, index)) as table:
            counts.append(int(table["count"]))
            sizes.append(table["sizes"])
            lower.append(table["lower"])
            upper.append(table["upper"])
    dims = len(grid.shape)
    return (np.array(counts, np.int64), np.concatenate(sizes).astype(np.int64),
            np.concatenate(lower).reshape(-1, dims), np.concatenate(upper).reshape(-1, dims))


def _offsets_of_neighbours(dims: int, axis: int, connectivity: int) -> list[tuple[int, ...]]:
    """Shifts (in the other axes) from a voxel below an upper face to the voxels above it that touch it."""
    shifts = []
    for delta in itertools.product((-1, 0, 1), repeat=dims - 1):
        if 1 + sum(d != 0 for d in delta) <= connectivity:
            shifts.append(delta)
    return shifts


def faces_task(jobs: list[tuple[int, ...]], *, grid: BlockGrid, root: str, connectivity: int) -> int:
    """A task: for the blocks ``jobs``, the provisional ids that touch across each upper face; return how many."""
    zarr = require("zarr", "zarr")
    local = zarr.open_array(str(Path(root) / "local.zarr"), mode="r")  # type: ignore[attr-defined]
    offsets = np.load(Path(root) / "offsets.npy")
    dims = len(grid.shape)
    wide = 1 if connectivity > 1 else 0
    for index in jobs:
        window = grid.window(index)
        found = [np.zeros((0, 2), np.int64)]
        for axis in range(dims):
            if index[axis] + 1 >= grid.counts[axis]:
                continue
            found.append(_face_pairs(local, grid, offsets, index, window, axis, wide, connectivity))
        pairs = np.unique(np.concatenate(found), axis=0)
        _save_atomic(_pairs(Path(root), grid, index), array=pairs)
    return len(jobs)


def _face_pairs(local: Any, grid: BlockGrid, offsets: np.ndarray, index: tuple[int, ...], window: Window,
                axis: int, wide: int, connectivity: int) -> np.ndarray:
    """Pairs of provisional ids touching across the face of block ``index`` above ``axis``."""
    face = window[axis].stop
    # the other axes: the block's range, one voxel wider on each side where the image goes on (zeros beyond)
    ranges = [(w.start - wide, w.stop + wide) for w in window]
    clipped = [(max(a, 0), min(b, s)) for (a, b), s in zip(ranges, grid.shape)]
    below_window = tuple(slice(face - 1, face) if a == axis else slice(*clipped[a]) for a in range(len(window)))
    above_window = tuple(slice(face, face + 1) if a == axis else slice(*clipped[a]) for a in range(len(window)))
    pad = [(0, 0) if a == axis else (clipped[a][0] - ranges[a][0], ranges[a][1] - clipped[a][1])
           for a in range(len(window))]
    below = np.pad(np.asarray(local[below_window]), pad)
    above = np.pad(np.asarray(local[above_window]), pad)
    # block number of every voxel above the face (its block differs from ours along the other axes near corners)
    blocks = [np.full(1, index[axis] + 1) if a == axis else
              np.clip(np.arange(*ranges[a]), 0, grid.shape[a] - 1) // grid.block[a] for a in range(len(window))]
    numbers = np.broadcast_to(np.ravel_multi_index(np.meshgrid(*blocks, indexing="ij", sparse=True), grid.counts),
                              above.shape)
    own = tuple(slice(None) if a == axis else slice(wide, above.shape[a] - wide) for a in range(len(window)))
    mine = below[own].astype(np.int64)
    pairs = []
    others = [a for a in range(len(window)) if a != axis]
    for delta in _offsets_of_neighbours(len(window), axis, connectivity):
        shifted = list(own)
        for a, d in zip(others, delta):
            shifted[a] = slice(wide + d, above.shape[a] - wide + d)
        theirs = above[tuple(shifted)].astype(np.int64)
        touching = (mine > 0) & (theirs > 0)
        if touching.any():
            first = offsets[grid.number(index)] + mine[touching]
            second = offsets[numbers[tuple(shifted)][touching]] + theirs[touching]
            pairs.append(np.stack([first, second], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def _merge(root: Path, grid: BlockGrid, offsets: np.ndarray, sizes: np.ndarray, lower: np.ndarray,
           upper: np.ndarray, min_size: int) -> Components:
    """Objects from the provisional ids and the face pairs (on the driver, over the tables only)."""
    sparse: Any = require("scipy.sparse", "segment")
    csgraph: Any = require("scipy.sparse.csgraph", "segment")
    total = int(sizes.size)
    edges = np.concatenate([np.load(_pairs(root, grid, index)) for index in grid] + [np.zeros((0, 2), np.int64)])
    nodes = total + 1  # node 0: the background, never in an edge
    graph = sparse.coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(nodes, nodes))
    _, component = csgraph.connected_components(graph, directed=False)
    component = component[1:]  # provisional ids 1..total
    count = int(component.max()) + 1 if total else 0
    object_sizes = np.bincount(component, weights=sizes, minlength=count).astype(np.int64)
    dims = len(grid.shape)
    low = np.full((count, dims), np.iinfo(np.int64).max, np.int64)
    high = np.zeros((count, dims), np.int64)
    np.minimum.at(low, component, lower)
    np.maximum.at(high, component, upper)
    # objects numbered in the order of their first provisional id (raster order of blocks), small ones dropped
    first = np.full(count, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, component, np.arange(total))
    order = np.argsort(first, kind="stable")
    kept = order[object_sizes[order] >= max(min_size, 1)]
    number = np.zeros(count, np.int64)
    number[kept] = np.arange(1, kept.size + 1)
    final = np.concatenate([[0], number[component]]).astype(np.int64)
    _save_atomic(root / "final.npy", array=final)
    logger.info("%d objects over %d blocks (%d provisional labels, %d face pairs)%s", kept.size, len(grid), total,
                len(edges), f"; {count - kept.size} smaller than {min_size} voxels removed" if min_size else "")
    return Components(root, grid, offsets, final, int(kept.size), object_sizes[kept], low[kept], high[kept])
