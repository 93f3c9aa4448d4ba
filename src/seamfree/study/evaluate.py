"""How the study measures one model on one test set: ``diagnose`` at two tile sizes, averaged over images.

For every test image the model is diagnosed twice with ground truth: on the study's core (test Dice of the
tiled eval-mode prediction, TM_dice/TM_abs, TED_dice/TED_abs/ΔDice on training-like batches, seam score,
exactness) and on a small core (Dice, TM and seam score with small tiles). Values are means over images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from seamfree.data.sources import Pair
from seamfree.diagnostics.diagnose import DiagnoseConfig, Diagnosis, diagnose
from seamfree.errors import ConfigError
from seamfree.models.checkpoint import model_metadata
from seamfree.study.arms import ARM_METRICS, measurement_batch_disparity, stitching_arm
from seamfree.tiling.normalize import IntensityNormalization
from seamfree.tiling.options import PredictConfig

__all__ = ["ACCURACY", "METRICS", "PER_IMAGE", "Evaluation", "dataset_normalization", "evaluate_accuracy",
           "evaluate_model", "load_test_pairs"]

logger = logging.getLogger(__name__)

# The metric columns of the study table, in order.
METRICS = ("dice", "dice_small", "dice_whole", "tm_dice", "tm_abs", "tm_dice_small", "tm_abs_small", "ted_dice",
           "ted_abs",
           "delta_dice", "delta_dice_se", "dice_train_mode", "dice_eval_mode", "seam_score", "seam_score_small",
           "exact_max_abs",
           "seams_detected", "seams_detected_small", "seam_z", "seam_z_small", "instance_tm", "instance_tm_small",
           "msa", "sa50", "matched_iou", *ARM_METRICS)
# What an accuracy-only evaluation (adapted transfer models) measures (and dice_small, dice_whole with tile sizes).
ACCURACY = ("dice", "msa", "sa50", "matched_iou")
# Metrics also kept image by image, for confidence intervals and paired differences over images and seeds.
PER_IMAGE = ("dice", "delta_dice", "msa", "ted_dice", *ARM_METRICS)


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one model on one test set, and the first image's small-tile prediction (for figures)."""

    metrics: dict[str, float | None]
    images: int
    example: dict[str, np.ndarray]
    per_image: dict[str, list[float | None]] = field(default_factory=dict)  # PER_IMAGE metrics, image by image


def load_test_pairs(dataset: dict[str, Any], *, spatial_dims: int, split: str, count: int | None) -> list[Pair]:
    """Return the first ``count`` (image, mask) pairs of a split of a study dataset (or synthetic ones); None:
    every pair of the split (4 synthetic ones)."""
    if dataset["name"] == "synthetic":
        count = 4 if count is None else count
        from seamfree.data.synthetic import SyntheticSpec, synthetic_image

        spec = SyntheticSpec(dataset.get("target") or "nuclei")
        pairs = [synthetic_image((384,) * spatial_dims, spec, seed=20_000 + k) for k in range(count)]
        return [(image[np.newaxis], mask[np.newaxis]) for image, mask in pairs]
    from seamfree.data.datasets import load_dataset

    pairs = load_dataset(dataset["name"], split, target=dataset.get("target"), subset=dataset.get("subset"),
                         spatial_dims=spatial_dims,
                         instances=dataset["name"] == "coelho2009")  # hand-segmented nuclei: their ids
    return pairs if count is None else pairs[:count]


def _metrics(normal: Diagnosis, small: Diagnosis) -> dict[str, float | None]:
    return {
        "dice": normal.dice, "dice_small": small.dice,
        "tm_dice": normal.tile_mismatch.tm_dice, "tm_abs": normal.tile_mismatch.tm_abs,
        "tm_dice_small": small.tile_mismatch.tm_dice, "tm_abs_small": small.tile_mismatch.tm_abs,
        "ted_dice": normal.disparity.ted_dice, "ted_abs": normal.disparity.ted_abs,
        "delta_dice": normal.disparity.delta_dice, "delta_dice_se": normal.disparity.delta_dice_se,  # per image
        "dice_train_mode": normal.disparity.dice_train,
        "dice_eval_mode": normal.disparity.dice_eval,
        "seam_score": normal.seams.score, "seam_score_small": small.seams.score,
        "exact_max_abs": normal.exactness.max_abs,
        # the calibrated seam test (a fraction of the test images once averaged), and its statistic
        "seams_detected": _flag(normal.seams.detected), "seams_detected_small": _flag(small.seams.detected),
        "seam_z": normal.seams.z, "seam_z_small": small.seams.z,
        # objects the two tilings segment differently (a fraction of all objects), and instance accuracy
        "instance_tm": None if normal.instances is None else normal.instances.fraction,
        "instance_tm_small": None if small.instances is None else small.instances.fraction,
        **{name: None if normal.instance_scores is None else normal.instance_scores[name]
           for name in ("msa", "sa50", "matched_iou")},
    }


def _flag(detected: bool | None) -> float | None:
    return None if detected is None else float(detected)


def _central(shape: tuple[int, ...], region: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice((n - min(n, r)) // 2, (n - min(n, r)) // 2 + min(n, r)) for n, r in zip(shape, region))


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def evaluate_model(
    model: nn.Module,
    pairs: list[Pair],
    *,
    core: int | tuple[int, ...],
    small_core: int | tuple[int, ...],
    halo: str | int = "auto",
    region: tuple[int, ...] | None = None,
    ted_batches: int | None = None,
    seed: int = 0,
    objects: str = "foreground",
    ted_sampling: str = "training",
    measurement_batches: tuple[int, ...] = (),
    blend_overlaps: tuple[float, ...] = (),
    blend_images: int = 2,
) -> Evaluation:
    """Return the study's metrics of ``model`` on ``pairs`` (means over images).

    ``region`` limits each image to its central box of that spatial shape. TED uses the model's own training
    patch and batch size (from its checkpoint metadata), patches drawn like its training batches
    (``ted_sampling="training"``; "uniform": anywhere). ``objects`` is what the instance metrics label: the
    foreground (nuclei, mitochondria) or the background (cells between membranes). ``measurement_batches``: TED
    also at these batch sizes, with BatchRenorm's clip rate; ``blend_overlaps``: the stitching arm (crop against
    Gaussian blending at these overlaps, :mod:`seamfree.study.arms`), on the study's core, for the first
    ``blend_images`` images.
    """
    metadata = model_metadata(model)
    per_image = []
    example: dict[str, np.ndarray] = {}
    for k, (image, mask) in enumerate(pairs):
        if region is not None:
            window = (slice(None), *_central(image.shape[1:], region))
            image, mask = image[window], mask[window]
        options: dict[str, Any] = {"halo": halo, "seed": seed, "max_voxels": 1 << 26, "objects": objects,
                                   "ted_sampling": ted_sampling,
                                   "patch_size": metadata.get("patch_size"), "batch_size": metadata.get("batch_size")}
        normal = diagnose(model, image, ground_truth=mask,
                          config=DiagnoseConfig(core=core, ted_batches=ted_batches, **options))
        small = diagnose(model, image, ground_truth=mask, config=DiagnoseConfig(core=small_core, ted_batches=1,
                                                                                **options))
        values = _metrics(normal, small)
        if measurement_batches:
            values.update(measurement_batch_disparity(model, image, mask, batch_sizes=measurement_batches,
                                                      seed=seed))
        if blend_overlaps and k < blend_images:
            values.update(stitching_arm(model, image, mask, core=normal.geometry["core"],
                                        halo=tuple(normal.geometry["halo"]), overlaps=blend_overlaps))
        per_image.append({name: values.get(name) for name in METRICS})
        if k == 0:
            example = {"image": small.image[0].astype(np.float32), "prediction": small.prediction[0].astype(np.float16),
                       "mask": np.asarray(mask[0] > 0, dtype=np.uint8),
                       "core": np.asarray(small.geometry["core"]), "halo": np.asarray(small.geometry["halo"])}
        logger.info("test image %d: Dice %s, TM_dice %.3g, TED_dice %.3g", k,  # a Dice of 0.0 is 0, not NaN
                    "–" if normal.dice is None else f"{normal.dice:.3f}", normal.tile_mismatch.tm_dice,
                    normal.disparity.ted_dice)
    metrics = {name: _mean([m[name] for m in per_image]) for name in METRICS}
    measured = [name for name in PER_IMAGE if any(m[name] is not None for m in per_image)]
    return Evaluation(metrics, len(pairs), example, {name: [m[name] for m in per_image] for name in measured})


def dataset_normalization(pairs: list[Pair], *, low: float = 1.0, high: float = 99.8) -> IntensityNormalization:
    """One intensity normalization for every image of ``pairs``: the percentiles of all their voxels pooled
    (per channel), instead of each image's own."""
    channels = pairs[0][0].shape[0]
    pooled = np.concatenate([np.asarray(image, dtype=np.float32).reshape(channels, -1) for image, _ in pairs],
                            axis=1)
    lo, hi = np.percentile(pooled, [low, high], axis=1)
    return IntensityNormalization(low=low, high=high, offset=tuple(float(v) for v in lo),
                                  scale=tuple(float(max(h - v, 1e-6)) for v, h in zip(lo, hi)))


def evaluate_accuracy(model: nn.Module, pairs: list[Pair], *, normalization: str = "image",
                      objects: str = "foreground", threshold: float = 0.5, core: Any = None, halo: Any = "auto",
                      small_core: Any = None, tile_sizes: bool = False,
                      measurement_batches: tuple[int, ...] = ()) -> Evaluation:
    """Return Dice and instance scores (:data:`ACCURACY`) of ``model``'s exact tiled prediction on ``pairs``.

    ``normalization`` is "image" (each image's own percentiles 1 and 99.8, as in training) or "dataset" (the
    percentiles of all test images pooled, :func:`dataset_normalization`). ``core`` and ``halo``: the tiling (the
    study's, as the full evaluation uses; None: predict's own choice). ``tile_sizes`` adds Dice with the
    ``small_core`` and of the whole image in one tile (``dice_small``, ``dice_whole``: for models whose prediction
    depends on the tile). ``measurement_batches``: TED and the clip rate at these batch sizes
    (:func:`~seamfree.study.arms.measurement_batch_disparity`).
    """
    if normalization not in ("image", "dataset"):
        raise ConfigError(f"normalization must be 'image' or 'dataset', got {normalization!r}")
    base = PredictConfig(normalization=dataset_normalization(pairs)) if normalization == "dataset" \
        else PredictConfig()
    per_image: list[dict[str, float | None]] = []
    example: dict[str, np.ndarray] = {}
    for k, (image, mask) in enumerate(pairs):
        tilings = {"dice": core}
        if tile_sizes:
            tilings.update(dice_small=small_core, dice_whole=tuple(image.shape[1:]))
        values: dict[str, float | None] = {}
        for key, tile_core in tilings.items():
            config = replace(base, core=tile_core, halo=halo, tile_timing=False) if tile_core is not None else base
            prediction, scores = _accuracy(model, image, mask, config, objects, threshold)
            values[key] = scores.pop("dice")
            if key == "dice":
                values.update(scores)
                if k == 0:
                    example = {"image": np.asarray(image[0], dtype=np.float32),
                               "prediction": prediction[0].astype(np.float16),
                               "mask": np.asarray(mask[0] > 0, dtype=np.uint8)}
        if measurement_batches:
            values.update(measurement_batch_disparity(model, image, mask, batch_sizes=measurement_batches))
        per_image.append(values)
        logger.info("test image %d: Dice %.3f", k, values["dice"])
    metrics: dict[str, float | None] = {name: None for name in METRICS}
    metrics.update({name: _mean([m.get(name) for m in per_image]) for name in METRICS
                    if any(m.get(name) is not None for m in per_image)})
    return Evaluation(metrics, len(pairs), example,
                      {name: [m.get(name) for m in per_image] for name in PER_IMAGE
                       if any(m.get(name) is not None for m in per_image)})


def _accuracy(model: nn.Module, image: np.ndarray, mask: np.ndarray, config: Any, objects: str,
              threshold: float) -> tuple[np.ndarray, dict[str, float | None]]:
    from seamfree.diagnostics.instances import instance_scores
    from seamfree.metrics import binarize, dice, masks_from_ground_truth
    from seamfree.tiling.predict import PredictionReport, predict

    report: list[PredictionReport] = []
    prediction = np.asarray(predict(model, image, config=config, report=report))
    activation = report[0].activation
    masks = masks_from_ground_truth(mask, prediction.shape[0], image.shape[1:])
    predicted = binarize(prediction, activation=activation, threshold=threshold)
    values: dict[str, float | None] = {
        "dice": float(np.mean([dice(predicted[c], masks[c]) for c in range(prediction.shape[0])]))}
    scores = instance_scores(prediction, mask, activation=activation, threshold=threshold, objects=objects) \
        if prediction.shape[0] == 1 else {}
    values.update({name: (float(scores[name]) if name in scores else None) for name in ACCURACY[1:]})
    return prediction, values
