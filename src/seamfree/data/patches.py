"""Where patches are drawn: anywhere, or centred on foreground, as training draws them.

Training (:class:`~seamfree.training.sampler.PatchSampler`), recalibration
(:func:`~seamfree.training.recalibrate.recalibrate_on_images`) and the train/eval disparity
(:func:`~seamfree.diagnostics.train_eval_disparity`) share this policy, so that the statistics a model is
recalibrated or judged with come from batches like those it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["MAX_FOREGROUND_POINTS", "foreground_points", "patch_origin"]

# Foreground coordinates kept per image for foreground-centred crops (a random subset bounds memory).
MAX_FOREGROUND_POINTS = 200_000


def foreground_points(foreground: ArrayLike) -> np.ndarray:
    """The coordinates ``(K, dims)`` of the true voxels of a spatial boolean array, at most 200 000 of them (a
    random subset drawn with a fixed generator: it must not depend on, or consume, a sampling stream)."""
    points = np.argwhere(np.asarray(foreground, dtype=bool))
    if len(points) > MAX_FOREGROUND_POINTS:
        points = points[np.random.default_rng(0).choice(len(points), MAX_FOREGROUND_POINTS, replace=False)]
    return points


def patch_origin(rng: np.random.Generator, spatial: Sequence[int], patch: Sequence[int], points: np.ndarray,
                 foreground_fraction: float) -> tuple[int, ...]:
    """The corner of a patch in an image of shape ``spatial``: with probability ``foreground_fraction`` (when there
    is foreground) centred on one of ``points`` (clipped to the image), else anywhere, uniformly."""
    if len(points) and rng.random() < foreground_fraction:
        center = points[rng.integers(len(points))]
        return tuple(int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(center, patch, spatial))
    return tuple(int(rng.integers(0, n - p + 1)) for n, p in zip(spatial, patch))
