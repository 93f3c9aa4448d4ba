"""Tile mismatch (TM): do two overlapping tiles agree where they overlap?

The image is stitched twice: grid A (the prediction grid) and grid B, whose core boundaries are shifted by
``offset`` (half a core by default) so that every seam of one grid falls inside cores of the other. Each
output voxel is predicted by exactly one tile of A and one tile of B; the voxels shared by tile i of A and
tile j of B form the region ``O_ij``. Both tiles have at least the halo of real context there (that is what a
core is), so zero-padding edge effects are excluded and only the dependence on the tile remains.

- pairwise TM (PAPER.md): ``TM_dice = 1 − mean over pairs (i, j) of Dice(P_i > θ, P_j > θ) on O_ij``,
  ``TM_abs`` = voxel-weighted mean of ``|P_i − P_j|`` over all ``O_ij``.
- shifted-grid TM: the two stitched predictions compared as wholes, ``1 − Dice(A > θ, B > θ)`` and the mean
  of ``|A − B|`` over the compared region.

Pairs whose two tiles read the same window (possible at the image border, where tiles shift inward) are
left out: they are the same computation. Grid B keeps only its tiles with whole cores inside the image,
so B costs about one more prediction of the compared region at most, and usually much less.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seamfree.config import deprecated_alias
from seamfree.metrics import binarize, dice
from seamfree.tiling.grid import Tile, TileGrid

__all__ = ["TileMismatch", "TilePair", "shifted_tiles", "tile_mismatch"]


@dataclass(frozen=True)
class TilePair:
    """Agreement of tile ``a`` (grid A) and tile ``b`` (grid B) on the region where both write.

    ``dice`` is their Dice (agreement, 1 = identical masks) and ``abs_difference`` the mean |P_a − P_b|, per
    channel.
    """

    a: tuple[int, ...]
    b: tuple[int, ...]
    region: tuple[slice, ...]
    dice: tuple[float, ...]
    abs_difference: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"a": list(self.a), "b": list(self.b), "region": [[s.start, s.stop] for s in self.region],
                "voxels": math.prod(s.stop - s.start for s in self.region),
                "dice": list(self.dice), "abs_difference": list(self.abs_difference)}


@dataclass(frozen=True)
class TileMismatch:
    """Tile mismatch of one model on one image; channel values are averaged in ``dice``/``abs``.

    Attributes
    ----------
    tm_dice, tm_abs : float
        Pairwise TM_dice (1 − mean Dice of tile pairs: 0 when tiles agree) and TM_abs (mean over channels).
    shifted_tm_dice, shifted_tm_abs : float
        Shifted-grid TM_dice and TM_abs (mean over channels).
    per_channel : list of dict
        The four values for each output channel, under the same names.
    pairs : tuple of TilePair
    compared_voxels : int
        Voxels where both grids wrote (and their tiles differ).
    map : ndarray, shape spatial
        ``|A − B|`` averaged over channels; NaN where grid B did not predict. Not serialized.
    """

    tm_dice: float
    tm_abs: float
    shifted_tm_dice: float
    shifted_tm_abs: float
    per_channel: list[dict[str, float]]
    pairs: tuple[TilePair, ...]
    compared_voxels: int
    map: np.ndarray = field(repr=False, compare=False)

    dice = deprecated_alias("dice", "tm_dice")
    abs = deprecated_alias("abs", "tm_abs")

    def to_dict(self) -> dict[str, Any]:
        return {"tm_dice": self.tm_dice, "tm_abs": self.tm_abs, "shifted_tm_dice": self.shifted_tm_dice,
                "shifted_tm_abs": self.shifted_tm_abs, "per_channel": self.per_channel,
                "pairs": [p.to_dict() for p in self.pairs], "compared_voxels": self.compared_voxels}


def shifted_tiles(grid_b: TileGrid) -> list[Tile]:
    """Return the tiles of grid B whose cores lie whole inside the image (the only ones TM needs)."""
    full = [{i for i, (_, _, write, _) in enumerate(grid_b.axis_tiles(axis))
             if write.stop - write.start == grid_b.core[axis] or grid_b.grid_shape[axis] == 1}
            for axis in range(grid_b.spatial_dims)]
    return [t for t in grid_b.tiles() if all(i in full[axis] for axis, i in enumerate(t.index))]


def tile_mismatch(
    first: np.ndarray,
    second: np.ndarray,
    grid_a: TileGrid,
    grid_b: TileGrid,
    *,
    activation: str,
    threshold: float = 0.5,
) -> TileMismatch:
    """Return the tile mismatch between two stitched predictions (C, *spatial) made on grids A and B.

    ``second`` holds NaN where grid B did not predict; those voxels are not compared.
    """
    channels = first.shape[0]
    compared = ~np.isnan(second[0])
    pairs = []
    for shared in itertools.product(*(_axis_pairs(grid_a, grid_b, axis) for axis in range(grid_a.spatial_dims))):
        if all(same for *_, same in shared):
            compared[tuple(region for _, _, region, _ in shared)] = False
            continue
        region = tuple(b for _, _, b, _ in shared)
        if not compared[region].any():
            continue
        pairs.append(_pair(first, second, shared, activation, threshold))
    difference = np.abs(first - second)
    mismatch_map = difference.mean(axis=0)
    mismatch_map[~compared] = np.nan
    per_channel = []
    for c in range(channels):
        if compared.any():
            a = binarize(first[:, compared], activation=activation, threshold=threshold)[c]
            b = binarize(second[:, compared], activation=activation, threshold=threshold)[c]
            shifted_dice = 1.0 - dice(a, b)
            shifted_abs = float(difference[c][compared].mean(dtype=np.float64))
        else:
            shifted_dice = shifted_abs = float("nan")
        voxels = np.array([math.prod(s.stop - s.start for s in p.region) for p in pairs], dtype=np.float64)
        per_channel.append({
            "tm_dice": 1.0 - float(np.mean([p.dice[c] for p in pairs])) if pairs else float("nan"),
            "tm_abs": float(np.dot([p.abs_difference[c] for p in pairs], voxels) / voxels.sum()) if pairs
            else float("nan"),
            "shifted_tm_dice": shifted_dice, "shifted_tm_abs": shifted_abs,
        })
    mean = {key: float(np.mean([pc[key] for pc in per_channel])) for key in per_channel[0]}
    return TileMismatch(mean["tm_dice"], mean["tm_abs"], mean["shifted_tm_dice"], mean["shifted_tm_abs"], per_channel,
                        tuple(pairs), int(compared.sum()), mismatch_map)


def _axis_pairs(grid_a: TileGrid, grid_b: TileGrid, axis: int) -> list[tuple[int, int, slice, bool]]:
    """Return (tile of A, tile of B, shared write interval, same read window) along one axis."""
    result = []
    tiles_b = grid_b.axis_tiles(axis)
    for i, (read_a, _, write_a, _) in enumerate(grid_a.axis_tiles(axis)):
        for j, (read_b, _, write_b, _) in enumerate(tiles_b):
            start, stop = max(write_a.start, write_b.start), min(write_a.stop, write_b.stop)
            if start < stop:
                result.append((i, j, slice(start, stop), read_a == read_b))
    return result


def _pair(first: np.ndarray, second: np.ndarray, shared: tuple[tuple[int, int, slice, bool], ...],
          activation: str, threshold: float) -> TilePair:
    region = tuple(b for _, _, b, _ in shared)
    p_a, p_b = first[(slice(None), *region)], second[(slice(None), *region)]
    valid = ~np.isnan(p_b[0])
    a = binarize(p_a[:, valid], activation=activation, threshold=threshold)
    b = binarize(p_b[:, valid], activation=activation, threshold=threshold)
    dices = tuple(dice(a[c], b[c]) for c in range(first.shape[0]))
    absolute = tuple(float(np.abs(p_a[c][valid] - p_b[c][valid]).mean(dtype=np.float64))
                     for c in range(first.shape[0]))
    return TilePair(tuple(i for i, _, _, _ in shared), tuple(j for _, j, _, _ in shared), region, dices, absolute)
