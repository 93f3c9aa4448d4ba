"""Instance-level tile mismatch: the objects that two tilings of the same image segment differently.

A faint seam in a probability map becomes a straight cut through every object it crosses once connected
components run on it. The foreground of each grid's stitched prediction (grids A and B, where B predicted) is
labelled (``scipy.ndimage.label``, face connectivity) and the objects without a one-to-one partner at IoU ≥ 0.5
in the other labelling are counted (:func:`seamfree.metrics.instance_mismatch`): 0 for a model whose tiles
agree, one per object a seam splits, merges or drops otherwise. With instance ground truth, the tiled
prediction's components are also scored (mSA, SA50, matched IoU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seamfree.errors import require
from seamfree.metrics import binarize, instance_metrics, instance_mismatch

__all__ = ["InstanceMismatch", "foreground_objects", "instance_scores", "instance_tile_mismatch"]


@dataclass(frozen=True)
class InstanceMismatch:
    """Objects of grid A and grid B (where both predicted), and how many of each have no partner in the other."""

    objects_a: int
    objects_b: int
    differing_a: int
    differing_b: int
    map: np.ndarray = field(repr=False, compare=False)  # the differing objects of either labelling

    @property
    def differing(self) -> int:
        return self.differing_a + self.differing_b

    @property
    def fraction(self) -> float:
        """Differing objects over all objects of both labellings (0: the tilings agree object for object)."""
        total = self.objects_a + self.objects_b
        return self.differing / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"objects_a": self.objects_a, "objects_b": self.objects_b, "differing_a": self.differing_a,
                "differing_b": self.differing_b, "fraction": self.fraction}


def foreground_objects(prediction: np.ndarray, *, activation: str, threshold: float,
                       objects: str = "foreground", within: np.ndarray | None = None) -> np.ndarray:
    """Connected components of a prediction's foreground (channel 0 of a sigmoid output; every class but the
    first of a softmax one), or of its background (``objects="background"``: cells between membranes), only
    inside the mask ``within`` when given."""
    ndimage: Any = require("scipy.ndimage", "segment")
    masks = binarize(prediction, activation=activation, threshold=threshold)
    foreground = masks[1:].any(axis=0) if activation == "softmax" and len(masks) > 1 else masks[0]
    selected = ~foreground if objects == "background" else foreground
    labels, _ = ndimage.label(selected if within is None else selected & within)
    return np.asarray(labels)


def instance_tile_mismatch(first: np.ndarray, second: np.ndarray, *, activation: str, threshold: float,
                           objects: str = "foreground") -> InstanceMismatch:
    """Instance TM of the stitched predictions ``first`` (grid A) and ``second`` (grid B, NaN where it did not
    predict): both labelled inside the region where both predicted, so that only the tiles differ."""
    compared = ~np.isnan(second[0])
    a = foreground_objects(first, activation=activation, threshold=threshold, objects=objects, within=compared)
    b = foreground_objects(np.nan_to_num(second), activation=activation, threshold=threshold, objects=objects,
                           within=compared)
    n_a, n_b, where = instance_mismatch(a, b)
    return InstanceMismatch(int(np.unique(a[a > 0]).size), int(np.unique(b[b > 0]).size), n_a, n_b, where)


def instance_scores(prediction: np.ndarray, ground_truth: np.ndarray, *, activation: str, threshold: float,
                    objects: str = "foreground") -> dict[str, float | int]:
    """mSA, SA50 and matched IoU of the prediction's components against ground-truth instances (a binary mask's
    own components when it holds no instance ids; with ``objects="background"``, those of its background)."""
    truth = np.asarray(ground_truth)
    if truth.ndim == prediction.ndim:
        truth = truth[0]
    if np.unique(truth).size <= 2:
        ndimage: Any = require("scipy.ndimage", "segment")
        truth = ndimage.label(truth == 0 if objects == "background" else truth > 0)[0]
    predicted = foreground_objects(prediction, activation=activation, threshold=threshold, objects=objects)
    return instance_metrics(predicted, truth)
