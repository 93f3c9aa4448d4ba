"""Random augmentation of training patches (numpy, one generator, so runs are reproducible and resumable)."""

from __future__ import annotations

import numpy as np

from seamfree.training.config import AugmentConfig

__all__ = ["augment_batch"]


def augment_batch(images: np.ndarray, targets: np.ndarray, config: AugmentConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return augmented copies of a batch ``(N, C, *spatial)`` and its targets (geometry applied to both).

    Geometry: flips of every spatial axis and rot90 in the last two axes (when they have equal size).
    Intensity (image only): scale and shift by up to ``intensity``, gamma in ``[1 − gamma, 1 + gamma]`` on the
    patch's min–max range, a smooth background offset up to ``background`` (a random field on a 4-point-per-axis
    grid, interpolated linearly over the patch), Gaussian noise up to ``noise``, Gaussian blur up to ``blur``
    voxels.
    """
    out_x, out_y = [], []
    for x, y in zip(images, targets):
        x, y = _geometry(x, y, config, rng)
        out_x.append(_intensity(x, config, rng))
        out_y.append(y)
    return np.ascontiguousarray(np.stack(out_x)), np.ascontiguousarray(np.stack(out_y))


def _geometry(x: np.ndarray, y: np.ndarray, config: AugmentConfig,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    spatial = x.ndim - 1
    if config.flips:
        for axis in range(1, spatial + 1):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
    if config.rot90 and x.shape[-1] == x.shape[-2]:
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
    return x, y


def _intensity(x: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    x = x.astype(np.float32, copy=True)
    if config.gamma:
        low, high = float(x.min()), float(x.max())
        if high > low:
            gamma = rng.uniform(1 - config.gamma, 1 + config.gamma)
            x = ((x - low) / (high - low)) ** gamma * (high - low) + low
    if config.intensity:
        x = x * rng.uniform(1 - config.intensity, 1 + config.intensity) + rng.uniform(-config.intensity,
                                                                                      config.intensity)
    if config.background:
        x = x + _smooth_field(x.shape[1:], config.background, rng)
    if config.blur:
        sigma = rng.uniform(0, config.blur)
        if sigma > 0.3:
            from scipy import ndimage

            x = np.stack([ndimage.gaussian_filter(c, sigma) for c in x])
    if config.noise:
        x = x + rng.normal(0, rng.uniform(0, config.noise), size=x.shape)
    return x.astype(np.float32, copy=False)


def _smooth_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A random offset in [0, ``amplitude``], smooth over the patch: values on a coarse grid, interpolated."""
    from scipy import ndimage

    coarse = rng.uniform(0, amplitude, size=(4,) * len(shape)) * rng.uniform()
    field = ndimage.zoom(coarse, [n / 4 for n in shape], order=1, mode="nearest", grid_mode=True)
    return field[tuple(slice(0, n) for n in shape)].astype(np.float32)[np.newaxis]
