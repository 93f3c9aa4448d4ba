"""Shares of a prediction for the tasks of a job array: ``--shard I/N``.

The write units of a plan are its tile cores (one core is one output shard: no two cores share a stored file).
:func:`partition` cuts them, in raster order, into ``N`` contiguous shares of equal computed voxels: share ``I``
is the flat tile indices ``[bounds[I], bounds[I + 1])``. The cut depends only on the grid and ``N``, never on
which tiles are done, so every task of an array computes the same shares, and a rerun of a task takes the same
tiles again. It costs ``O(N · log T · dims)`` for ``T`` tiles, whatever the volume: a petabyte in 10,000 shares
is cut in well under a second (``benchmarks/bench_shards.py``).

:func:`shard_from_environment` reads the task's index and count from the scheduler (SLURM, LSF, PBS, SGE,
Kubernetes indexed jobs) for ``--shard auto``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from seamfree.errors import ConfigError
from seamfree.tiling.grid import Tile, TileGrid

__all__ = ["SCHEDULER_VARIABLES", "Shard", "parse_shard", "partition", "shard_from_environment", "shard_tiles"]


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (from 0) of ``count`` shares of a prediction."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1 and isinstance(self.index, int)
                and 0 <= self.index < self.count):
            raise ConfigError(f"a shard is I/N with 0 <= I < N and N >= 1, got {self.index}/{self.count}; "
                              "e.g. --shard 0/4 for the first of four tasks")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")

# (index variable, count variable, how the index is numbered) per scheduler, in the order they are looked for:
# SLURM's array index starts at --array's first value (SLURM_ARRAY_TASK_MIN), LSF's, PBS's and SGE's at 1
SCHEDULER_VARIABLES = (
    ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
    ("LSB_JOBINDEX", "LSB_JOBINDEX_END", "1"),
    ("PBS_ARRAY_INDEX", "PBS_ARRAY_COUNT", "1"),
    ("SGE_TASK_ID", "SGE_TASK_LAST", "1"),
    ("JOB_COMPLETION_INDEX", "SEAMFREE_SHARD_COUNT", "0"),
)


def parse_shard(text: str, environment: Mapping[str, str] | None = None) -> Shard:
    """``"I/N"`` as a :class:`Shard`; ``"auto"`` reads the job array's index and count (see
    :func:`shard_from_environment`)."""
    if text.strip().lower() == "auto":
        return shard_from_environment(os.environ if environment is None else environment)
    match = _SHARD.fullmatch(text)
    if match is None:
        raise ConfigError(f"--shard takes I/N (this task's share, from 0, of N) or auto, got {text!r}; e.g. "
                          "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_environment(environment: Mapping[str, str]) -> Shard:
    """The share of this task of a job array, from the scheduler's variables.

    SLURM: ``SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``; LSF: ``LSB_JOBINDEX − 1``
    of ``LSB_JOBINDEX_END``; PBS: ``PBS_ARRAY_INDEX − 1`` of ``PBS_ARRAY_COUNT`` (set it: PBS has no count);
    SGE: ``SGE_TASK_ID − 1`` of ``SGE_TASK_LAST``; Kubernetes indexed jobs: ``JOB_COMPLETION_INDEX`` of
    ``SEAMFREE_SHARD_COUNT`` (set it to the job's ``completions``). ``SEAMFREE_SHARD_COUNT`` overrides any count.
    """
    override = environment.get("SEAMFREE_SHARD_COUNT")
    for index_name, count_name, first in SCHEDULER_VARIABLES:
        if index_name not in environment:
            continue
        start = environment.get(first, "0") if first.isidentifier() else first
        count = override or environment.get(count_name)
        if count is None:
            raise ConfigError(f"--shard auto found {index_name}={environment[index_name]!r} but not the number of "
                              f"tasks ({count_name}); set SEAMFREE_SHARD_COUNT=N or pass --shard I/N")
        try:
            return Shard(int(environment[index_name]) - int(start), int(count))
        except ValueError as exc:
            raise ConfigError(f"--shard auto cannot read the task index {index_name}={environment[index_name]!r} "
                              f"(first {start!r}) or the count {count!r}: pass --shard I/N") from exc
    names = ", ".join(index for index, _, _ in SCHEDULER_VARIABLES)
    raise ConfigError(f"--shard auto needs a job array's task index ({names}) and none is set: this is not a task "
                      "of a job array; pass --shard I/N")


def _axis_costs(grid: TileGrid) -> list[list[int]]:
    """Computed voxels of each tile, per axis: a tile computes the product of its axes' read extents."""
    return [[r.stop - r.start for r, _, _, _ in grid.axis_tiles(axis)] for axis in range(grid.spatial_dims)]


def _cumulative(costs: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    prefix = [list(itertools.accumulate(c, initial=0)) for c in costs]
    # suffix products: the cost of one whole slab below an axis (all tiles of the later axes)
    below = [math.prod(p[-1] for p in prefix[axis + 1:]) for axis in range(len(costs))]
    return prefix, below


def _cost_before(flat: int, shape: tuple[int, ...], costs: list[list[int]], prefix: list[list[int]],
                 below: list[int]) -> int:
    """Computed voxels of the tiles before flat (raster) index ``flat``."""
    total, factor = 0, 1
    index = _unravel(flat, shape)
    for axis, i in enumerate(index):
        total += factor * prefix[axis][i] * below[axis]
        factor *= costs[axis][i]
    return total


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for n in reversed(shape):
        flat, i = divmod(flat, n)
        index.append(i)
    return tuple(reversed(index))


def partition(grid: TileGrid, count: int) -> list[int]:
    """Flat tile indices ``bounds`` (``count + 1`` of them, from 0 to ``len(grid)``): share ``I`` is the tiles
    ``[bounds[I], bounds[I + 1])`` in raster order, each share as close to ``1/count`` of the computed voxels as
    whole tiles allow (a tile goes to the share its first voxel's cumulative cost falls in)."""
    if count < 1:
        raise ConfigError(f"the number of shares must be at least 1, got {count}")
    shape, costs = grid.grid_shape, _axis_costs(grid)
    prefix, below = _cumulative(costs)
    tiles, total = len(grid), prefix[0][-1] * below[0]

    class _Costs:  # a lazy sequence of the cumulative costs, for bisect
        def __len__(self) -> int:
            return tiles

        def __getitem__(self, flat: int) -> int:
            return _cost_before(flat, shape, costs, prefix, below)

    before = _Costs()
    bounds = [0]
    for share in range(1, count):
        goal = -(-total * share // count)  # ceil: the first tile whose cost starts at or after share/count
        bounds.append(max(bounds[-1], bisect.bisect_left(before, goal)))
    bounds.append(tiles)
    return bounds


def shard_tiles(grid: TileGrid, shard: Shard, bounds: list[int] | None = None) -> Iterator[Tile]:
    """The tiles of ``shard``'s share, in raster order (``bounds``: :func:`partition`'s, when already cut)."""
    bounds = bounds or partition(grid, shard.count)
    shape = grid.grid_shape
    for flat in range(bounds[shard.index], bounds[shard.index + 1]):
        yield grid.tile_at(_unravel(flat, shape))
