"""Synthetic predictions and label comparisons shared by the segmentation tests."""

from __future__ import annotations

import numpy as np


def same_objects(a, b) -> bool:
    """Whether two label images hold the same objects, whatever their ids (a bijection between the ids)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def nuclei(shape, count, seed, radius=(4, 9)):
    """A synthetic nuclei prediction: foreground and boundary probabilities of touching discs (or balls)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    foreground = np.zeros(shape, np.float32)
    boundary = np.zeros(shape, np.float32)
    for _ in range(count):
        centre = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(*radius)
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
        foreground = np.maximum(foreground, np.clip(r + 0.5 - distance, 0, 1) * 0.95)
        boundary = np.maximum(boundary, np.exp(-((distance - r) ** 2) / 2.0).astype(np.float32) * 0.9)
    noise = rng.normal(0, 0.02, (2, *shape)).astype(np.float32)
    return np.clip(np.stack([foreground, boundary]) + noise, 0, 1)


def write_prediction(path, prediction, scale):
    """An OME-Zarr prediction as seamfree predict writes it (through its own writer)."""
    from seamfree.io.ome import Calibration
    from seamfree.io.zarr_output import ZarrOutput

    output = ZarrOutput(path, shape=prediction.shape, dtype=np.dtype(np.float32), chunks=prediction.shape[1:],
                        fingerprint={"test": "prediction"}, calibration=Calibration(scale, None, ("micrometer",) * 2),
                        pyramid=False)
    output.write(tuple(slice(0, s) for s in prediction.shape[1:]), prediction)
    output.finalize()
