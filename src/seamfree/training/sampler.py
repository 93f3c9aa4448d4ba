"""Patch sampling from large 2D/3D images: random crops, foreground-aware, deterministic by generator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from seamfree.data.patches import foreground_points, patch_origin
from seamfree.errors import ConfigError, DataError

__all__ = ["PatchSampler"]

_MIN_FOREGROUND_RETRIES = 10


class PatchSampler:
    """Draw training batches of patches from (image, mask) pairs.

    Parameters
    ----------
    pairs : sequence of (ndarray, ndarray)
        Images ``(C, *spatial)`` (already intensity-normalized) and masks ``(C_out, *spatial)``.
    patch_size : tuple of int
    batch_size : int
    foreground_fraction : float
        Probability that a patch is centred on a random foreground voxel (else anywhere).
    min_foreground : float
        Redraw (up to 10 times) patches whose foreground fraction is below this.
    rng : numpy.random.Generator
        The only source of randomness; its state is what resuming restores.
    """

    def __init__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], patch_size: tuple[int, ...], batch_size: int,
                 *, foreground_fraction: float, min_foreground: float, rng: np.random.Generator) -> None:
        if not pairs:
            raise DataError("the training set is empty: no (image, mask) pairs were loaded; check the data section")
        for image, mask in pairs:
            spatial = image.shape[1:]
            if len(spatial) != len(patch_size):
                raise ConfigError(f"patch_size {patch_size} has {len(patch_size)} axes, the images {len(spatial)} "
                                  f"(shape {image.shape})")
            if any(p > n for p, n in zip(patch_size, spatial)):
                raise ConfigError(f"patch_size {patch_size} is larger than the image {spatial}; use a patch of at "
                                  f"most {tuple(min(p, n) for p, n in zip(patch_size, spatial))}")
            if mask.shape[1:] != spatial:
                raise DataError(f"mask shape {mask.shape} does not match image shape {image.shape}")
        self.pairs = list(pairs)
        self.patch_size = tuple(patch_size)
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.min_foreground = min_foreground
        self.rng = rng
        sizes = np.array([math.prod(image.shape[1:]) for image, _ in self.pairs], dtype=np.float64)
        self._weights = sizes / sizes.sum()
        self._foreground = [self._foreground_points(mask) for _, mask in self.pairs]

    @staticmethod
    def _foreground_points(mask: np.ndarray) -> np.ndarray:
        return foreground_points(np.asarray(mask.any(axis=0)))

    def _origin(self, index: int) -> tuple[int, ...]:
        return patch_origin(self.rng, self.pairs[index][0].shape[1:], self.patch_size, self._foreground[index],
                            self.foreground_fraction)

    def patch(self) -> tuple[np.ndarray, np.ndarray]:
        """Return one (image patch, mask patch)."""
        for attempt in range(_MIN_FOREGROUND_RETRIES):
            index = int(self.rng.choice(len(self.pairs), p=self._weights))
            origin = self._origin(index)
            window = (slice(None), *(slice(o, o + p) for o, p in zip(origin, self.patch_size)))
            image, mask = self.pairs[index]
            y = mask[window]
            if self.min_foreground <= 0 or y.any(axis=0).mean() >= self.min_foreground \
                    or attempt == _MIN_FOREGROUND_RETRIES - 1:
                return image[window], y
        raise AssertionError("unreachable")

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Return a batch ``(N, C, *patch)`` float32 images and ``(N, C_out, *patch)`` float32 targets."""
        patches = [self.patch() for _ in range(self.batch_size)]
        return (np.stack([p[0] for p in patches]).astype(np.float32),
                np.stack([p[1] for p in patches]).astype(np.float32))
