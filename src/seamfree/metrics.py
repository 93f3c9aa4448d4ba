"""Agreement between segmentations: binarization of probabilities, the Dice coefficient, and instance metrics
(segmentation accuracy over IoU thresholds, matched IoU, objects two segmentations disagree on).

Shared by diagnostics (tile mismatch, train/eval disparity) and training (validation Dice), so it sits
below both.
"""

from __future__ import annotations

import numpy as np

from seamfree.errors import ShapeError

__all__ = ["IOU_THRESHOLDS", "binarize", "dice", "instance_metrics", "instance_mismatch", "masks_from_ground_truth"]


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


IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5, 0.55, ..., 0.95


def _overlaps(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pairs of overlapping objects ``(pred id, true id, IoU)`` (only pairs that share voxels: sparse), and how
    many objects each image holds."""
    predicted, truth = np.asarray(predicted).ravel(), np.asarray(truth).ravel()
    if predicted.shape != truth.shape:
        raise ShapeError(f"label images of different shapes: {predicted.shape} and {truth.shape}")
    pred_ids, pred_sizes = np.unique(predicted[predicted > 0], return_counts=True)
    true_ids, true_sizes = np.unique(truth[truth > 0], return_counts=True)
    both = (predicted > 0) & (truth > 0)
    pairs, shared = np.unique(np.stack([predicted[both], truth[both]]), axis=1, return_counts=True)
    size_p = pred_sizes[np.searchsorted(pred_ids, pairs[0])] if pairs.size else np.zeros(0)
    size_t = true_sizes[np.searchsorted(true_ids, pairs[1])] if pairs.size else np.zeros(0)
    iou = shared / (size_p + size_t - shared) if pairs.size else np.zeros(0)
    return pairs[0], pairs[1], iou, int(pred_ids.size), int(true_ids.size)


def _matches(first: np.ndarray, second: np.ndarray, iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one matches ``(a, b)`` with IoU ≥ ``threshold`` (≥ 0.5: above 0.5 each object has at most one
    partner; ties at exactly 0.5 go to the higher IoU first, then the lower ids)."""
    order = np.lexsort((second, first, -iou))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matched = []
    for k in order:
        if iou[k] < threshold:
            break
        a, b = int(first[k]), int(second[k])
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            matched.append((a, b))
    return matched


def instance_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Instance segmentation accuracy of the labels ``predicted`` against the true instances ``truth``.

    ``sa50``: TP / (TP + FP + FN) with objects matched one to one at IoU ≥ 0.5 (the "average precision" of
    the 2018 Data Science Bowl, StarDist and Cellpose); ``msa``: its mean over IoU 0.5, 0.55, ..., 0.95;
    ``matched_iou``: mean IoU of the pairs matched at 0.5 (1 if none; NaN when both images are empty).

    Examples
    --------
    >>> truth = np.array([[1, 1, 0, 2, 2]])
    >>> instance_metrics(truth, truth)["msa"]
    1.0
    >>> m = instance_metrics(np.array([[1, 1, 0, 2, 3]]), truth)  # object 2 split: one half matches at 0.5
    >>> m["sa50"], m["false_positives"], m["false_negatives"]
    (0.6666666666666666, 1, 0)
    """
    first, second, iou, n_pred, n_true = _overlaps(predicted, truth)
    scores = {}
    for threshold in IOU_THRESHOLDS:
        tp = len(_matches(first, second, iou, threshold))
        total = n_pred + n_true - tp
        scores[threshold] = tp / total if total else 1.0
    pairs = set(_matches(first, second, iou, 0.5))
    tp50 = len(pairs)
    matched = np.array([v for a, b, v in zip(first.tolist(), second.tolist(), iou) if (a, b) in pairs])
    return {"msa": float(np.mean(list(scores.values()))), "sa50": float(scores[0.5]),
            "matched_iou": float(matched.mean()) if matched.size else (float("nan") if not n_true else 0.0),
            "true_objects": n_true, "predicted_objects": n_pred, "true_positives": tp50,
            "false_positives": n_pred - tp50, "false_negatives": n_true - tp50}


def instance_mismatch(first: np.ndarray, second: np.ndarray) -> tuple[int, int, np.ndarray]:
    """Objects that two label images of the same image segment differently: those without a partner at IoU ≥
    0.5 in the other image (split, merged, cut or missing). Returns (count in ``first``, count in ``second``, a
    mask of those objects in either image); 0, 0 for identical segmentations up to the ids.

    Examples
    --------
    >>> a = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> n_a, n_b, where = instance_mismatch(a, np.array([[1, 1, 3, 3, 0, 2, 2]]))  # object 1 cut in two
    >>> n_a, n_b, where.astype(int).tolist()
    (0, 1, [[0, 0, 1, 1, 0, 0, 0]])
    """
    a_ids, b_ids, iou, _, _ = _overlaps(first, second)
    pairs = _matches(a_ids, b_ids, iou, 0.5)
    matched_a, matched_b = {a for a, _ in pairs}, {b for _, b in pairs}
    objects_a = np.unique(first[first > 0])
    objects_b = np.unique(second[second > 0])
    lost_a = np.setdiff1d(objects_a, list(matched_a))
    lost_b = np.setdiff1d(objects_b, list(matched_b))
    where = np.isin(first, lost_a) | np.isin(second, lost_b)
    return int(lost_a.size), int(lost_b.size), where
