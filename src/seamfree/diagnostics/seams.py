"""Seam score: are the core boundaries of a stitched prediction visible?

For every seam (a core boundary inside the image) along every axis, the jump of the prediction across it,
``|P[b] − P[b − 1]|``, is compared with the same finite difference on every other line parallel to it::

    seam score = mean |jump| on seam lines / mean |jump| on the other lines of the same stride phase

averaged over channels. Only lines at the same position modulo the network stride are compared: a pooling
network's output has a faint periodic pattern with the period of its stride (the pooling grid), and seams,
being stride-aligned, always sit at the same phase of it; comparing with every line would call that pattern
a seam. About 1 means seamless (the seams look like any other place of the image); a
tile-dependent model gives clearly more. The seam map holds each seam voxel's jump (0 elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seamfree.tiling.grid import TileGrid

__all__ = ["SeamScore", "seam_positions", "seam_score"]


@dataclass(frozen=True)
class SeamScore:
    """Seam score of a stitched prediction.

    Attributes
    ----------
    score : float or None
        Seam / interior mean jump over all axes; None when the grid has no seam.
    per_axis : list of float or None
        The same ratio for each spatial axis (None for an axis without seams).
    seam_jump, interior_jump : float
        The two means.
    seams : int
        Number of seam lines (planes in 3D).
    map : ndarray, shape spatial
        Jump across the seam at seam voxels, 0 elsewhere. Not serialized.
    """

    score: float | None
    per_axis: list[float | None]
    seam_jump: float
    interior_jump: float
    seams: int
    map: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "per_axis": self.per_axis, "seam_jump": self.seam_jump,
                "interior_jump": self.interior_jump, "seams": self.seams}


def seam_positions(grid: TileGrid, axis: int) -> list[int]:
    """Return the image coordinates where a core begins along ``axis``, except 0."""
    return [write.start for _, _, write, _ in grid.axis_tiles(axis) if 0 < write.start < grid.image_shape[axis]]


def _ratio(seam: float, interior: float) -> float:
    if interior > 0:
        return seam / interior
    return 1.0 if seam == 0 else float("inf")


def seam_score(prediction: np.ndarray, grid: TileGrid) -> SeamScore:
    """Return the seam score of ``prediction`` (C, *spatial) stitched on ``grid``."""
    spatial = prediction.shape[1:]
    seam_map = np.zeros(spatial, dtype=np.float32)
    per_axis: list[float | None] = []
    seam_sum = interior_sum = 0.0
    seam_count = interior_count = seams = 0
    for axis in range(len(spatial)):
        if spatial[axis] < 2:
            per_axis.append(None)
            continue
        # jumps[..., k, ...] = |P[k + 1] − P[k]|, averaged over channels
        jumps = np.abs(np.diff(prediction, axis=axis + 1)).mean(axis=0)
        lines = np.array(seam_positions(grid, axis), dtype=int) - 1
        is_seam = np.zeros(jumps.shape[axis], dtype=bool)
        is_seam[lines] = True
        stride = grid.network_stride[axis]
        same_phase = (np.arange(jumps.shape[axis]) + 1) % stride == 0  # jump k is between voxels k and k + 1
        interior = same_phase & ~is_seam
        line_means = jumps.mean(axis=tuple(a for a in range(jumps.ndim) if a != axis), dtype=np.float64)
        seam_sum_axis, interior_sum_axis = float(line_means[is_seam].sum()), float(line_means[interior].sum())
        n_seam, n_interior = int(is_seam.sum()), int(interior.sum())
        seams += n_seam
        seam_sum += seam_sum_axis
        seam_count += n_seam
        interior_sum += interior_sum_axis
        interior_count += n_interior
        per_axis.append(_ratio(seam_sum_axis / n_seam, interior_sum_axis / max(n_interior, 1)) if n_seam else None)
        for line in lines:
            target = [slice(None)] * len(spatial)
            target[axis] = slice(line + 1, line + 2)
            source = [slice(None)] * len(spatial)
            source[axis] = slice(line, line + 1)
            np.maximum(seam_map[tuple(target)], jumps[tuple(source)], out=seam_map[tuple(target)])
    seam_mean = seam_sum / seam_count if seam_count else 0.0
    interior_mean = interior_sum / interior_count if interior_count else 0.0
    score = _ratio(seam_mean, interior_mean) if seam_count else None
    return SeamScore(score, per_axis, seam_mean, interior_mean, seams, seam_map)
