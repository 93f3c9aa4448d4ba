"""The multiscale pyramid of an OME-Zarr output: levels 1, 2, ... downsampled 2× per spatial axis from the level
below, block by block (one output chunk at a time: bounded memory), resumable through done markers.

Probabilities are averaged (uint8 ones rounded back); masks and labels take every second voxel (a label is never
averaged into another). An odd extent's last voxel is averaged with itself. A level's voxel size doubles, and its
origin moves by half a voxel of the level below, so that every level overlays level 0.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from seamfree.errors import require

__all__ = ["Downsampling", "Runner", "block_key", "blocks", "downsample", "downsample_task", "level_shapes",
           "level_transforms", "local_path", "pyramid_voxels", "write_pyramid"]

logger = logging.getLogger(__name__)

Downsampling = Literal["mean", "stride"]

# levels are added until the largest spatial extent is at most this (a viewer's overview fits one screen)
SMALLEST_EXTENT = 256


def level_shapes(shape: Sequence[int], smallest: int = SMALLEST_EXTENT, lead: int = 1) -> list[tuple[int, ...]]:
    """Shapes ``(C, *spatial)`` (``(T, C, *spatial)`` with ``lead`` 2) of levels 1, 2, ... until every spatial
    extent is at most ``smallest``.

    Examples
    --------
    >>> level_shapes((1, 1000, 600))
    [(1, 500, 300), (1, 250, 150)]
    >>> level_shapes((5, 1, 500, 300), lead=2)
    [(5, 1, 250, 150)]
    """
    levels: list[tuple[int, ...]] = []
    current = tuple(int(s) for s in shape)
    while max(current[lead:]) > smallest:
        current = (*current[:lead], *(max(1, -(-s // 2)) for s in current[lead:]))
        levels.append(current)
    return levels


def downsample(block: np.ndarray, method: Downsampling, lead: int = 1) -> np.ndarray:
    """Return ``block`` ``(C, *spatial)`` (``lead`` 2: ``(T, C, *spatial)``) downsampled 2× per spatial axis."""
    if method == "stride":
        return block[(slice(None),) * lead + tuple(slice(0, None, 2) for _ in block.shape[lead:])]
    pad = [(0, 0)] * lead + [(0, s % 2) for s in block.shape[lead:]]
    shape = list(block.shape[:lead])
    for s, (_, extra) in zip(block.shape[lead:], pad[lead:]):
        shape += [(s + extra) // 2, 2]
    axes = tuple(range(lead + 1, len(shape), 2))
    if np.issubdtype(block.dtype, np.integer):
        # integer-exact: the sum in a wide integer, divided with rounding half to even (what np.rint of the
        # float64 mean gives), without a float64 copy of the block
        total = np.pad(block, pad, mode="edge") if any(extra for _, extra in pad) else block
        total = total.astype(np.int64 if block.dtype.itemsize >= 4 else np.int32)
        for axis in range(lead, block.ndim):  # pairs summed axis by axis: strided views, no reshape copies
            ahead = (slice(None),) * axis
            total = total[(*ahead, slice(0, None, 2))] + total[(*ahead, slice(1, None, 2))]
        count = 2 ** len(axes)
        quotient, remainder = np.divmod(total, count)
        quotient += (2 * remainder > count) | ((2 * remainder == count) & (quotient % 2 == 1))
        return quotient.astype(block.dtype)
    values = np.pad(block.astype(np.float64), pad, mode="edge")
    return values.reshape(shape).mean(axis=axes).astype(block.dtype)


def blocks(shape: Sequence[int], chunks: Sequence[int], lead: int = 1) -> list[tuple[slice, ...]]:
    """The windows of the chunks ``chunks`` of an array ``(C, *spatial)`` of ``shape``: spatial windows; with
    ``lead`` 2 (``(T, C, *spatial)``) the time window comes first. The channel axis is never split."""
    axes = [a for a in range(len(shape)) if a != lead - 1]
    ranges = [range(0, shape[a], chunks[a]) for a in axes]
    return [tuple(slice(o, min(o + chunks[a], shape[a])) for o, a in zip(origin, axes))
            for origin in itertools.product(*ranges)]


def block_key(block: Sequence[slice], lead: int = 1) -> tuple[slice, ...]:
    """The index of ``block`` (from :func:`blocks`) into the whole array: every channel."""
    return (*block[:lead - 1], slice(None), *block[lead - 1:])


# Runs ``task(batch)`` for every batch, here or elsewhere (the dask driver passes one that maps the batches over
# its cluster), and returns when all are done.
Runner = Callable[[Callable[[list[Any]], Any], list[list[Any]]], None]
# pyramid blocks per task when a runner spreads them over a cluster
BLOCKS_PER_TASK = 32


def local_path(group: Any) -> str | None:
    """The file-system path of a zarr group on a local store (None for other stores)."""
    root = getattr(group.store, "root", None)
    return None if root is None else os.path.join(str(root), group.path)


def write_pyramid(group: Any, markers: Path, method: Downsampling, smallest: int = SMALLEST_EXTENT,
                  run: Runner | None = None, lead: int = 1) -> int:
    """Write levels ``1``, ``2``, ... of ``group`` from its level ``0``; return how many levels there are.

    Each level's arrays are created once; each written block leaves a marker in ``markers/pyramid``, so a rerun
    after a kill writes only the blocks still missing. ``run`` spreads each level's blocks over workers that see
    the same storage (a level starts when the one below is complete); by default they are written here.
    ``lead`` is 2 for a time series ``(T, C, *spatial)``: each frame is downsampled on its own.
    """
    base = group["0"]
    shapes = level_shapes(base.shape, smallest, lead)
    done = markers / "pyramid"
    done.mkdir(parents=True, exist_ok=True)
    chunks = tuple(base.chunks)  # a sharded level 0's inner chunks
    shards = getattr(base, "shards", None)  # and its shards: the levels above are sharded alike (few files)
    layout: dict[str, Any] = {"dimension_names": getattr(base.metadata, "dimension_names", None)}
    if base.metadata.zarr_format == 2:  # NGFF 0.4: "/" in chunk keys, no dimension names
        layout = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    path = local_path(group)
    for level, shape in enumerate(shapes, start=1):
        name = str(level)
        if name not in group:
            if shards is None:
                level_layout = {"chunks": tuple(min(c, s) for c, s in zip(chunks, shape))}
            else:
                level_shards = tuple(min(c, s) for c, s in zip(shards, shape))
                inner = tuple(_divisor_at_most(n, c) for n, c in zip(level_shards, chunks))
                level_layout = ({"chunks": inner, "shards": level_shards} if inner != level_shards
                                else {"chunks": level_shards})
            group.create_array(name, shape=shape, dtype=base.dtype, fill_value=0, **level_layout, **layout)
        unit = tuple(getattr(group[name], "shards", None) or group[name].chunks)  # one writer per stored file
        jobs = [(level, block, str(marker)) for block in blocks(shape, unit, lead)
                if not (marker := done / f"{level}_{'_'.join(str(w.start) for w in block)}").exists()]
        if run is None or path is None:
            _downsample_jobs(group, jobs, method, lead)
        else:
            run(partial(downsample_task, path=path, method=method, lead=lead),
                [jobs[i:i + BLOCKS_PER_TASK] for i in range(0, len(jobs), BLOCKS_PER_TASK)])
        logger.info("pyramid level %d %s: %d blocks written", level, shape, len(jobs))
    return 1 + len(shapes)


def _divisor_at_most(extent: int, edge: int) -> int:
    """The largest divisor of ``extent`` that is at most ``edge`` (a shard holds a whole number of chunks)."""
    return next(d for d in range(min(extent, edge), 0, -1) if extent % d == 0)


def downsample_task(jobs: list[tuple[int, tuple[slice, ...], str]], *, path: str, method: Downsampling,
                    lead: int = 1) -> int:
    """A task (here or on a dask worker): write the pyramid blocks ``jobs`` (level, window, marker path) of the
    zarr group at ``path``; return how many."""
    zarr = require("zarr", "zarr")
    return _downsample_jobs(zarr.open_group(path, mode="r+"), jobs, method, lead)  # type: ignore[attr-defined]


def _downsample_jobs(group: Any, jobs: list[tuple[int, tuple[slice, ...], str]], method: Downsampling,
                     lead: int = 1) -> int:
    for level, block, marker in jobs:
        below, target = group[str(level - 1)], group[str(level)]
        extents = [n for a, n in enumerate(below.shape) if a != lead - 1]
        source = tuple(w if a < lead - 1 else slice(2 * w.start, min(2 * w.stop, n))
                       for a, (w, n) in enumerate(zip(block, extents)))  # a time window is not scaled
        target[block_key(block, lead)] = downsample(np.asarray(below[block_key(source, lead)]), method, lead)
        Path(marker).touch()
    return len(jobs)


def level_transforms(scale: Sequence[float], translation: Sequence[float], level: int,
                     method: Downsampling, lead: int = 1) -> tuple[list[float], list[float]]:
    """Scale and translation ``(C, *spatial)`` (``lead`` 2: ``(T, C, *spatial)``) of pyramid ``level`` from level
    0's: each level doubles the voxel size; averaging moves the origin by half a voxel of the level below (the
    mean of two voxel centres), taking every second voxel keeps it."""
    factor = 2 ** level
    shift = (factor - 1) / 2 if method == "mean" else 0.0
    spatial_scale = [s * factor for s in scale[lead:]]
    spatial_translation = [t + shift * s for t, s in zip(translation[lead:], scale[lead:])]
    return [*scale[:lead], *spatial_scale], [*translation[:lead], *spatial_translation]


def pyramid_voxels(shape: Sequence[int], smallest: int = SMALLEST_EXTENT, lead: int = 1) -> int:
    """Voxels of all pyramid levels above level 0 (at most a third of level 0 in 2D, a seventh in 3D)."""
    return sum(math.prod(s) for s in level_shapes(shape, smallest, lead))
