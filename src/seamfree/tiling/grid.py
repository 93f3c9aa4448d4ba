"""Tile geometry: where each tile reads, which part of its prediction it keeps, and where that goes.

Coordinates are those of the *padded image*: the image reflect-padded at the far end of every axis up to a
multiple of the network stride (the only padding there is; it is what whole-image prediction needs too).
Every tile window starts at a multiple of the network stride and lies inside the padded image, so pooling
grids coincide with whole-image prediction, and a tile touches the image border only where the whole-image
prediction does. Tiles keep one shape: at the image border they shift inward instead of shrinking, and along
an axis where the image is smaller than a tile the tile is the whole (padded) axis.

With ``overlap = 0`` (crop stitching) cores partition the image; with ``overlap > 0`` (blend stitching)
neighbouring cores overlap by at least ``overlap`` voxels and the last core is shifted to end at the border.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from seamfree.errors import ConfigError, HaloError, ShapeError

__all__ = ["Tile", "TileGrid", "as_axis_tuple", "round_up"]

logger = logging.getLogger(__name__)

# A tile computing more than this many times the voxels it writes (per axis) is a misconfiguration.
MAX_TILE_TO_CORE_RATIO = 8


def as_axis_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Return ``value`` as one int per spatial axis (an int applies to every axis).

    Examples
    --------
    >>> as_axis_tuple(8, 3, "halo"), as_axis_tuple([4, 8], 2, "halo")
    ((8, 8, 8), (4, 8))
    """
    if isinstance(value, int):
        values: tuple[int, ...] = (value,) * ndim
    else:
        values = tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ConfigError(f"{name} needs one value per spatial axis ({ndim}), got {tuple(values)}")
    return values


def round_up(value: int, multiple: int) -> int:
    """Return the smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes
    ----------
    index : tuple of int
        Position of the core in the grid; also the id of its done marker.
    read : tuple of slice
        Window of the padded image the tile reads (may reach past the image end into the reflect padding).
    crop : tuple of slice
        Region of the tile's prediction that is kept (the core, clipped to the image).
    write : tuple of slice
        Where the kept region goes in the output (image coordinates).
    core : tuple of slice
        The full core in padded coordinates (for blend weights); equals ``write`` unless clipped.
    """

    index: tuple[int, ...]
    read: tuple[slice, ...]
    crop: tuple[slice, ...]
    write: tuple[slice, ...]
    core: tuple[slice, ...]


@dataclass(frozen=True)
class TileGrid:
    """A grid of equally shaped tiles over a 2D/3D (N-D) image.

    Build it with :meth:`TileGrid.create`, which validates and aligns the geometry.

    Attributes
    ----------
    image_shape : tuple of int
        Spatial shape of the image.
    core, halo, overlap, network_stride : tuple of int
        Per-axis geometry (already aligned to the network stride).
    """

    image_shape: tuple[int, ...]
    core: tuple[int, ...]
    halo: tuple[int, ...]
    network_stride: tuple[int, ...]
    overlap: tuple[int, ...]
    _starts: tuple[tuple[int, ...], ...] = field(repr=False, compare=False, default=())

    @classmethod
    def create(
        cls,
        image_shape: Sequence[int],
        core: int | Sequence[int],
        halo: int | Sequence[int],
        *,
        network_stride: int | Sequence[int] = 1,
        overlap: int | Sequence[int] = 0,
        offset: int | Sequence[int] = 0,
        pinned: bool = False,
    ) -> TileGrid:
        """Return a validated grid; core and halo are rounded up to the network stride.

        Parameters
        ----------
        image_shape : sequence of int
            Spatial shape of the image.
        core : int or sequence of int
            Core shape (what each tile writes), clipped to the padded image.
        halo : int or sequence of int
            Context read on each side of a core; rounded up to a multiple of the network stride.
        network_stride : int or sequence of int
            Total downsampling of the network.
        overlap : int or sequence of int
            Overlap of neighbouring cores (blend stitching); 0 for crop stitching.
        offset : int or sequence of int
            Shift of the core boundaries (crop stitching only): cores start at ``offset + k·core`` and a first,
            shorter core covers ``[0, offset)``. Rounded up to the network stride. Diagnostics use it to
            stitch the image a second time with seams in other places (the shifted-grid tile mismatch).
        pinned : bool
            If True, a core that is not a multiple of the network stride is an error instead of being
            rounded up with a logged notice.
        """
        shape = tuple(int(s) for s in image_shape)
        ndim = len(shape)
        if any(s < 1 for s in shape):
            raise ShapeError(f"image spatial shape must be positive, got {shape}")
        stride = as_axis_tuple(network_stride, ndim, "network_stride")
        core_t = as_axis_tuple(core, ndim, "core")
        halo_t = as_axis_tuple(halo, ndim, "halo")
        overlap_t = as_axis_tuple(overlap, ndim, "overlap")
        offset_t = as_axis_tuple(offset, ndim, "offset")
        if any(c < 1 for c in core_t) or any(h < 0 for h in halo_t) or any(o < 0 for o in overlap_t + offset_t):
            raise ConfigError(f"core must be positive and halo/overlap non-negative, got core={core_t}, "
                              f"halo={halo_t}, overlap={overlap_t}")
        core_t = _align_core(core_t, stride, pinned)
        padded = tuple(round_up(s, st) for s, st in zip(shape, stride))
        halo_t = tuple(round_up(h, st) for h, st in zip(halo_t, stride))
        core_t = tuple(min(c, p) for c, p in zip(core_t, padded))
        # Along an axis where one tile would cover the image anyway, use a single core: exact, no halo needed.
        core_t = tuple(p if c + 2 * h >= p else c for c, h, p in zip(core_t, halo_t, padded))
        _check_halo(core_t, halo_t, padded)
        overlap_t = _align_overlap(overlap_t, core_t, stride, padded)
        offset_t = tuple(round_up(f, s) % c if c < p else 0 for f, s, c, p in zip(offset_t, stride, core_t, padded))
        if any(offset_t) and any(overlap_t):
            raise ConfigError(f"offset {offset_t} works with crop stitching only (overlap 0), got overlap {overlap_t}")
        starts = tuple(_core_starts(p, c, c - o, f) for p, c, o, f in zip(padded, core_t, overlap_t, offset_t))
        return cls(shape, core_t, halo_t, stride, overlap_t, starts)

    @property
    def spatial_dims(self) -> int:
        return len(self.image_shape)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Image shape rounded up to the network stride."""
        return tuple(round_up(s, st) for s, st in zip(self.image_shape, self.network_stride))

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """Shape of every tile: core + 2·halo, at most the padded image."""
        return tuple(min(c + 2 * h, p) for c, h, p in zip(self.core, self.halo, self.padded_shape))

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of cores along each axis."""
        return tuple(len(s) for s in self._starts)

    def __len__(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def compute_ratio(self) -> float:
        """Voxels computed by all tiles divided by image voxels (1.0 is the whole-image forward)."""
        return len(self) * math.prod(self.tile_shape) / math.prod(self.image_shape)

    def axis_tiles(self, axis: int) -> list[tuple[slice, slice, slice, slice]]:
        """Return (read, crop, write, core) slices of each core along one axis."""
        n, p = self.image_shape[axis], self.padded_shape[axis]
        c, h, t = self.core[axis], self.halo[axis], self.tile_shape[axis]
        starts = self._starts[axis]
        result = []
        for i, a in enumerate(starts):
            # A core ends where the next begins (the first core of a shifted grid is shorter), or at the image end.
            end = starts[i + 1] if not self.overlap[axis] and i + 1 < len(starts) else a + c
            start = min(max(a - h, 0), p - t)
            b = min(end, n)
            result.append((slice(start, start + t), slice(a - start, b - start), slice(a, b), slice(a, end)))
        return result

    @functools.cached_property
    def _per_axis(self) -> list[list[tuple[slice, slice, slice, slice]]]:
        return [self.axis_tiles(axis) for axis in range(self.spatial_dims)]

    def tile_at(self, index: Sequence[int]) -> Tile:
        """The tile at grid position ``index`` (one position per axis)."""
        parts = [self._per_axis[axis][i] for axis, i in enumerate(index)]
        return Tile(
            index=tuple(int(i) for i in index),
            read=tuple(p[0] for p in parts),
            crop=tuple(p[1] for p in parts),
            write=tuple(p[2] for p in parts),
            core=tuple(p[3] for p in parts),
        )

    def tiles(self) -> Iterator[Tile]:
        """Yield every tile in raster order (last axis fastest)."""
        for index in itertools.product(*(range(n) for n in self.grid_shape)):
            yield self.tile_at(index)


def _align_core(core: tuple[int, ...], stride: tuple[int, ...], pinned: bool) -> tuple[int, ...]:
    aligned = tuple(round_up(c, s) for c, s in zip(core, stride))
    if aligned != core:
        if pinned:
            raise ConfigError(
                f"core {core} is not a multiple of the network stride {stride}; pass core={aligned} "
                "(or leave the core unpinned to round it up automatically)"
            )
        logger.info("core %s rounded up to %s, a multiple of the network stride %s", core, aligned, stride)
    return aligned


def _check_halo(core: tuple[int, ...], halo: tuple[int, ...], padded: tuple[int, ...]) -> None:
    for c, h, p in zip(core, halo, padded):
        if c + 2 * h < p and (c + 2 * h) > MAX_TILE_TO_CORE_RATIO * c:
            raise HaloError(
                f"halo {halo} is larger than the core {core} allows: each tile would compute more than "
                f"{MAX_TILE_TO_CORE_RATIO}× the voxels it writes along an axis; use a core of at least "
                f"{tuple(2 * x for x in halo)} (or let seamfree.suggest_tiling choose)"
            )


def _align_overlap(
    overlap: tuple[int, ...], core: tuple[int, ...], stride: tuple[int, ...], padded: tuple[int, ...]
) -> tuple[int, ...]:
    result = []
    for o, c, s, p in zip(overlap, core, stride, padded):
        if c >= p:
            result.append(0)  # a single core covers this axis: nothing to overlap
            continue
        if o >= c:
            raise ConfigError(
                f"overlap {overlap} must be smaller than the core {core} on every axis; "
                f"e.g. overlap={tuple(x // 4 for x in core)}"
            )
        step = max(s, (c - o) // s * s)  # the step between cores must keep tiles stride-aligned
        result.append(c - step if o else 0)
    return tuple(result)


def _core_starts(padded: int, core: int, step: int, offset: int = 0) -> tuple[int, ...]:
    """Return core origins along one axis: every ``step``; the last one ends at the image border (blend)."""
    if core >= padded:
        return (0,)
    if step == core:  # crop: cores partition the axis; the last one is clipped to the image
        return ((0,) if offset else ()) + tuple(range(offset, padded, core))
    starts = list(range(0, padded - core, step))
    starts.append(padded - core)
    return tuple(starts)
