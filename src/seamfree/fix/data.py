"""The fix's images in memory (raw and normalized as prediction normalizes them), its held-out part, and how
training patches are drawn from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from seamfree.data.patches import patch_origin
from seamfree.errors import ConfigError
from seamfree.fix.config import FixConfig
from seamfree.io.readers import open_image
from seamfree.tiling.grid import as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.training.recalibrate import recorded_foreground_fraction as foreground_fraction

__all__ = ["MAX_VOXELS", "FixData", "central_region", "draw_batch", "foreground_fraction", "training_patch"]

# the most voxels of one image the fix holds in memory (larger images contribute a central region)
MAX_VOXELS = 1 << 24


@dataclass
class FixData:
    """The images in memory (raw, as given) and normalized as prediction normalizes them, and the held-out part."""

    raw: list[np.ndarray]
    normalized: list[np.ndarray]
    held_out: str
    split: int | None  # one image: training uses it up to this index of the last axis

    @classmethod
    def load(cls, images: Sequence[Any], dims: int, in_channels: int) -> FixData:
        raw, normalized = [], []
        for image in images:
            source = open_image(image, spatial_dims=dims)
            try:
                window = central_region(source.spatial_shape)
                region = source.read(window)
                if region.shape[0] != in_channels:
                    raise ConfigError(f"image {source.where} has {region.shape[0]} channel(s); the model takes "
                                      f"{in_channels}")
                statistics = compute_normalization(open_image(region, spatial_dims=dims), IntensityNormalization())
                raw.append(region)
                normalized.append(statistics.apply(region))
            finally:
                source.close()
        if len(raw) > 1:
            return cls(raw, normalized, f"image {len(raw) - 1} (the last)", None)
        split = (3 * raw[0].shape[-1]) // 4
        return cls(raw, normalized, "the last quarter of the image along its last axis", split)

    @property
    def smallest(self) -> tuple[int, ...]:
        spatial = [image.shape[1:] for image in self.train_images()]
        return tuple(min(s[a] for s in spatial) for a in range(len(spatial[0])))

    def train_images(self) -> list[np.ndarray]:
        if self.split is None:
            return self.raw[:-1]
        return [self.raw[0][..., :self.split]]

    def train_pairs(self, teacher: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.split is None:
            return list(zip(self.normalized[:-1], teacher[:-1]))
        return [(self.normalized[0][..., :self.split], teacher[0][..., :self.split])]

    def held_out_pair(self, teacher: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw, normalized, teacher logits) of the held-out data."""
        if self.split is None:
            return self.raw[-1], self.normalized[-1], teacher[-1]
        cut = (Ellipsis, slice(self.split, None))
        return self.raw[0][cut], self.normalized[0][cut], teacher[0][cut]


def central_region(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The whole image, or a central region of at most :data:`MAX_VOXELS` voxels."""
    if math.prod(shape) <= MAX_VOXELS:
        return tuple(slice(0, n) for n in shape)
    side = int(MAX_VOXELS ** (1 / len(shape)))
    return tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side)) for n in shape)


def training_patch(model: nn.Module, config: FixConfig, dims: int, stride: tuple[int, ...],
           smallest: tuple[int, ...]) -> tuple[int, ...]:
    """The training patch: given, else the recorded one, at least 128 (2D) / 64 (3D), a multiple of the stride."""
    if config.patch_size is not None:
        patch = as_axis_tuple(config.patch_size, dims, "patch_size")
    else:
        recorded = (getattr(model, "seamfree_metadata", {}) or {}).get("patch_size")
        floor = 128 if dims == 2 else 64
        base = as_axis_tuple(recorded, dims, "patch_size") if recorded else (floor,) * dims
        patch = tuple(max(b, floor) for b in base)
    patch = tuple(min(p, (n // s) * s) for p, n, s in zip(patch, smallest, stride))
    if any(p < s or p % s for p, s in zip(patch, stride)):
        raise ConfigError(f"patch_size {patch} must be a multiple of the network stride {stride} and fit the "
                          f"images (the smallest training region is {smallest}); pass another patch_size")
    return patch


def draw_batch(pairs: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, ...], size: int,
           rng: np.random.Generator, points: list[np.ndarray] | None = None,
           fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = [], []
    for _ in range(size):
        k = int(rng.integers(len(pairs)))
        image, target = pairs[k]
        origin = patch_origin(rng, image.shape[1:], patch, points[k] if points else np.zeros((0, len(patch))),
                              fraction)
        window = (slice(None), *[slice(o, o + p) for o, p in zip(origin, patch)])
        inputs.append(image[window])
        targets.append(target[window])
    return np.stack(inputs).astype(np.float32), np.stack(targets).astype(np.float32)
