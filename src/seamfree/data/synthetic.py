"""Synthetic large images with known masks, deterministic by seed.

Two kinds of structure, in 2D or 3D:

- ``nuclei``: bright blobs of varying size and brightness on a dark background (mask = blob interiors);
- ``membranes``: the boundaries of a Voronoi tessellation, dark lines on a bright cytoplasm, like EM
  (mask = membranes).

and the conditions that expose per-tile normalization (each controllable, in :class:`SyntheticSpec`): a
smooth background gradient, empty regions (no structure), bright debris that is not foreground, and
intensity shifts between regions of the image. Images are float32 with values roughly in [0, 1], masks uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from seamfree.errors import ConfigError, require

__all__ = ["SyntheticSpec", "synthetic_image"]

Kind = Literal["nuclei", "membranes"]


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic image contains.

    Attributes
    ----------
    kind : {"nuclei", "membranes"}
    object_size : float
        Nucleus radius, or the typical cell diameter of membranes, in voxels.
    density : float
        Fraction of the image covered by nuclei (nuclei only).
    gradient : float
        Amplitude of a smooth additive background gradient across the image.
    empty_fraction : float
        Fraction of the image (one box) left without structure.
    debris : int
        Number of small, very bright, non-foreground spots.
    region_shift : float
        Intensity offset added to one half of the image (a shift between regions).
    noise : float
        Standard deviation of Gaussian noise.
    blur : float
        Gaussian blur (voxels) applied to the clean image before noise.
    """

    kind: Kind = "nuclei"
    object_size: float = 8.0
    density: float = 0.25
    gradient: float = 0.0
    empty_fraction: float = 0.0
    debris: int = 0
    region_shift: float = 0.0
    noise: float = 0.08
    blur: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("nuclei", "membranes"):
            raise ConfigError(f"synthetic kind must be 'nuclei' or 'membranes', got {self.kind!r}")
        if self.object_size <= 1 or not 0 < self.density < 1 or not 0 <= self.empty_fraction < 1:
            raise ConfigError(
                f"need object_size > 1, 0 < density < 1 and 0 <= empty_fraction < 1; got object_size="
                f"{self.object_size}, density={self.density}, empty_fraction={self.empty_fraction}"
            )


def synthetic_image(shape: tuple[int, ...], spec: SyntheticSpec | None = None, *,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)`` of spatial ``shape`` (2D or 3D): float32 image, uint8 mask (1 = foreground).

    Examples
    --------
    >>> image, mask = synthetic_image((64, 64), SyntheticSpec("nuclei", object_size=5), seed=1)
    >>> image.shape, image.dtype, np.unique(mask).tolist()
    ((64, 64), dtype('float32'), [0, 1])
    """
    require("scipy", "plot")
    from scipy import ndimage

    spec = spec or SyntheticSpec()
    if len(shape) not in (2, 3) or min(shape) < 4:
        raise ConfigError(f"synthetic images are 2D or 3D with every side >= 4, got shape {shape}")
    rng = np.random.default_rng(seed)
    if spec.kind == "nuclei":
        clean, mask = _nuclei(shape, spec, rng)
    else:
        clean, mask = _membranes(shape, spec, rng)
    keep = _empty_box(shape, spec.empty_fraction, rng)
    if keep is not None:
        mask[keep] = 0
        clean[keep] = clean.min() if spec.kind == "nuclei" else float(np.median(clean))
    if spec.blur > 0:
        clean = ndimage.gaussian_filter(clean, spec.blur)
    clean += _background(shape, spec, rng)
    _add_debris(clean, spec.debris, spec.object_size, rng)
    clean += rng.normal(0.0, spec.noise, size=shape).astype(np.float32)
    return clean.astype(np.float32), mask.astype(np.uint8)


def _nuclei(shape: tuple[int, ...], spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = np.full(shape, 0.1, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    volume = math.prod(shape)
    radius = spec.object_size
    unit = math.pi * radius**2 if len(shape) == 2 else 4 / 3 * math.pi * radius**3
    count = max(1, int(spec.density * volume / unit))
    for _ in range(count):
        r = radius * rng.uniform(0.6, 1.4)
        center = [rng.uniform(0, n) for n in shape]
        axes = [r * rng.uniform(0.75, 1.25) for _ in shape]
        box = tuple(slice(max(0, int(c - a - 1)), min(n, int(c + a + 2))) for c, a, n in zip(center, axes, shape))
        grids = np.ogrid[box]
        inside = np.asarray(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, center, axes)) <= 1.0)
        brightness = rng.uniform(0.5, 1.0)
        region = image[box]
        region[inside] = np.maximum(region[inside], brightness * (0.85 + 0.15 * rng.random(int(inside.sum()))))
        mask[box] |= inside
    return image, mask


def _membranes(shape: tuple[int, ...], spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    # Voronoi cells from a jittered lattice of seeds; membranes where the nearest seed changes.
    spacing = spec.object_size
    counts = [max(1, int(n / spacing)) for n in shape]
    seeds = np.zeros(shape, dtype=np.int32)
    label = 1
    for index in np.ndindex(*counts):
        position = tuple(min(n - 1, int((i + rng.uniform(0.1, 0.9)) * n / k)) for i, n, k in zip(index, shape, counts))
        seeds[position] = label
        label += 1
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[tuple(nearest)]
    boundary = np.zeros(shape, dtype=bool)
    for axis in range(len(shape)):
        change = np.diff(cells, axis=axis) != 0
        lower = [slice(None)] * len(shape)
        lower[axis] = slice(0, -1)
        boundary[tuple(lower)] |= change
    thickness = max(1, round(spacing / 16))
    mask = ndimage.binary_dilation(boundary, iterations=thickness)
    per_cell = rng.uniform(0.55, 0.85, size=label).astype(np.float32)
    image = per_cell[cells]
    image[mask] = 0.15
    return image, mask


def _empty_box(shape: tuple[int, ...], fraction: float, rng: np.random.Generator) -> tuple[slice, ...] | None:
    if fraction <= 0:
        return None
    side = fraction ** (1 / len(shape))
    extent = [max(1, int(n * side)) for n in shape]
    origin = [int(rng.integers(0, n - e + 1)) for n, e in zip(shape, extent)]
    return tuple(slice(o, o + e) for o, e in zip(origin, extent))


def _background(shape: tuple[int, ...], spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    background = np.zeros(shape, dtype=np.float32)
    if spec.gradient:
        direction = rng.normal(size=len(shape))
        direction /= np.linalg.norm(direction)
        grids = np.ogrid[tuple(slice(0, n) for n in shape)]
        ramp = sum(d * g / n for d, g, n in zip(direction, grids, shape))
        background += (spec.gradient * (ramp - ramp.min())).astype(np.float32)
    if spec.region_shift:
        half = [slice(None)] * len(shape)
        half[-1] = slice(shape[-1] // 2, None)
        background[tuple(half)] += spec.region_shift
    return background


def _add_debris(image: np.ndarray, count: int, size: float, rng: np.random.Generator) -> None:
    for _ in range(count):
        center = [int(rng.integers(0, n)) for n in image.shape]
        r = max(1, int(size * rng.uniform(0.3, 0.6)))
        box = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, n in zip(center, image.shape))
        image[box] += rng.uniform(2.0, 4.0)
