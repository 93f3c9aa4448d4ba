"""Agreement between segmentations: binarization of probabilities and the Dice coefficient.

Shared by diagnostics (tile mismatch, train/eval disparity) and training (validation Dice), so it sits
below both.
"""

from __future__ import annotations

import numpy as np

from seamfree.errors import ShapeError

__all__ = ["binarize", "dice", "masks_from_ground_truth"]


def binarize(probabilities: np.ndarray, *, activation: str, threshold: float = 0.5) -> np.ndarray:
    """Return one boolean mask per channel of ``probabilities`` (C, *spatial).

    A softmax output with several channels is binarized by argmax (channel c where it wins); any other output
    (sigmoid, raw values) channel by channel with ``threshold``.
    """
    if activation == "softmax" and probabilities.shape[0] > 1:
        winner = np.argmax(probabilities, axis=0)
        return np.stack([winner == c for c in range(probabilities.shape[0])])
    return probabilities > threshold


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Return 2|a∧b| / (|a| + |b|) of two boolean masks; 1.0 when both are empty.

    Examples
    --------
    >>> dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    >>> dice(np.zeros(3, bool), np.zeros(3, bool))
    1.0
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def masks_from_ground_truth(ground_truth: np.ndarray, channels: int, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Return boolean masks (channels, *spatial) from a ground-truth mask or label image.

    Accepted: ``spatial`` or ``(1, *spatial)`` foreground (> 0) for one output channel; ``spatial`` labels
    0..channels-1 for a multi-class output; ``(channels, *spatial)`` one mask per channel.
    """
    gt = np.asarray(ground_truth)
    if gt.shape == spatial_shape:
        if channels == 1:
            return (gt > 0)[np.newaxis]
        return np.stack([gt == c for c in range(channels)])
    if gt.shape == (channels, *spatial_shape):
        return gt > 0
    raise ShapeError(
        f"ground truth has shape {gt.shape}, the prediction has {channels} channel(s) and spatial shape "
        f"{spatial_shape}; pass a mask of shape {spatial_shape} or {(channels, *spatial_shape)}"
    )
