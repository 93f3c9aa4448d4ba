"""What a segmentation is asked for: :class:`SegmentConfig` (the options of ``seamfree segment``, checked when made)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from seamfree.errors import ConfigError
from seamfree.segment.methods import METHODS

__all__ = ["DEFAULT_BLOCK", "SegmentConfig"]

# default block edge by spatial dimensions: 16 MiB of uint32 labels, a few times that of float32 input
DEFAULT_BLOCK = {2: 2048, 3: 128}


@dataclass(frozen=True)
class SegmentConfig:
    """How to turn a prediction into instance labels (CLI ``seamfree segment`` options of the same names).

    Parameters
    ----------
    method : {"components", "watershed", "distance"}
        See :mod:`seamfree.segment.methods` for what each expects of the prediction's channels.
    foreground_channel, boundary_channel : int, optional
        Channels of the prediction (default: a one-channel prediction is the foreground of ``components`` and
        ``distance`` and the boundary map of ``watershed``; a two-channel one is (foreground, boundary)).
    threshold : float
        Foreground probability above which a voxel belongs to an object (the mask).
    seed_threshold : float
        ``watershed``: seeds are ``foreground − boundary > seed_threshold``.
    min_size : int
        ``components``: objects smaller than this many voxels are removed.
    min_distance, min_radius
        ``distance``: seeds are maxima of the distance transform within ``min_distance`` voxels, at least
        ``min_radius`` voxels inside the mask (with anisotropic voxels, in voxels of the finest axis).
    connectivity : int
        1 (faces, scipy's default) up to the number of spatial axes (corners).
    block : int or tuple, optional
        Block (and output chunk) shape; default 2048² in 2D, 128³ in 3D.
    halo : "auto", int or tuple
        Context around each block for ``watershed``/``distance`` (``components`` needs none): "auto" is the
        extent of the largest object (plus ``min_distance`` for ``distance``), at most ``max_halo``.
    max_halo : int or tuple, optional
        The cap of the automatic halo (default: half the block), which bounds memory (a crop is at most twice the
        block per axis).
    name : str, optional
        Name of the label image when the labels go next to the prediction (``PRED.zarr/labels/NAME``; default the
        method).
    key, spatial_dims, axes
        What to read of the input (as in ``predict``). A stored 3-axis array without axis metadata whose first
        axis is short (``(2, Y, X)``: channels, or a volume of 2 sections?) needs ``spatial_dims`` or ``axes``.
    pyramid : bool
        A multiscale pyramid of the labels (every second voxel).
    overwrite : bool
        Replace an existing segmentation seamfree wrote.
    """

    method: Literal["components", "watershed", "distance"] = "components"
    foreground_channel: int | None = None
    boundary_channel: int | None = None
    threshold: float = 0.5
    seed_threshold: float = 0.5
    min_size: int = 0
    min_distance: int = 3
    min_radius: float = 1.0
    connectivity: int = 1
    block: int | tuple[int, ...] | None = None
    halo: int | tuple[int, ...] | str = "auto"
    max_halo: int | tuple[int, ...] | None = None
    name: str | None = None
    key: str | None = None
    spatial_dims: int | None = None
    axes: str | None = None
    pyramid: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown segmentation method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("threshold", "seed_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} (CLI --{name.replace('_', '-')}) must lie in [0, 1], got {value}")
        if self.min_size < 0 or self.min_distance < 1 or not self.min_radius >= 0:
            raise ConfigError(f"min_size must be >= 0, min_distance >= 1 and min_radius >= 0, got {self.min_size}, "
                              f"{self.min_distance}, {self.min_radius}")
        if self.connectivity < 1:
            raise ConfigError(f"connectivity must be between 1 (faces) and the number of spatial axes (corners), "
                              f"got {self.connectivity}")
        if isinstance(self.halo, str) and self.halo != "auto":
            raise ConfigError(f"halo must be 'auto' or voxels per axis, got {self.halo!r}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"name {self.name!r} is not a label image name; use letters, digits, '-' or '_'")

    def fingerprinted(self) -> dict[str, Any]:
        """The settings that decide the labels (not where they go, nor ``overwrite``)."""
        # axes only when given: the fingerprints of earlier segmentations stay valid
        return {k: v for k, v in asdict(self).items() if k not in ("overwrite", "name", "pyramid")
                and not (k == "axes" and v is None)}
