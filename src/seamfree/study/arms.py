"""The study's measurement arms beyond ``diagnose`` (round three of the study):

- **TED as a 2-D table**: the train/eval disparity at measurement batch sizes other than the training batch
  (:func:`measurement_batch_disparity`), so that the training-batch effect and the measurement-batch effect are
  separated; BatchRenorm's r/d clip rate on the same batches (with r and d unclipped its TED is 0 by construction).
- **Blending**: the practitioner's workaround the paper argues against. Gaussian-weighted blend stitching at two
  core overlaps against crop stitching (:func:`stitching_arm`): Dice against the ground truth, and how far two
  predictions whose tile grids are shifted by half a tile step differ (mean |Δ| a core away from the image's
  borders: 0 for a method whose prediction does not depend on where the tiles lie, the size of the seams
  otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from seamfree.diagnostics.disparity import train_eval_disparity, training_foreground_fraction
from seamfree.io.readers import open_image
from seamfree.layers.batchrenorm import counting_clips
from seamfree.metrics import binarize, dice, masks_from_ground_truth
from seamfree.models.checkpoint import model_metadata
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization, resolve_normalization
from seamfree.tiling.options import PredictConfig

__all__ = ["ARM_METRICS", "BLEND_OVERLAPS", "MEASUREMENT_BATCHES", "TED_PATCHES", "blend_key",
           "measurement_batch_disparity", "stitching_arm"]

# TED batches at every measurement batch size hold this many patches (at least 8 batches), as diagnose's default.
TED_PATCHES = 32
# The measurement batch sizes and blend overlaps a study may ask for (the study table has a column for each).
MEASUREMENT_BATCHES = (1, 2, 4, 8)
BLEND_OVERLAPS = (0.25, 0.5)


def blend_key(overlap: float) -> str:
    """The column suffix of a blend overlap: 0.25 → "blend25"."""
    return f"blend{round(overlap * 100)}"


def _arm_metrics() -> tuple[str, ...]:
    modes = ("crop", *(blend_key(o) for o in BLEND_OVERLAPS))
    return (*(f"ted_dice_m{b}" for b in MEASUREMENT_BATCHES), *(f"clip_rate_m{b}" for b in MEASUREMENT_BATCHES),
            "clip_rate", "clip_rate_r", "clip_rate_d", *(f"dice_{m}" for m in modes),
            *(f"shift_abs_{m}" for m in modes))


# The study table's columns of these arms.
ARM_METRICS = _arm_metrics()


def measurement_batch_disparity(model: nn.Module, image: np.ndarray, mask: np.ndarray, *,
                                batch_sizes: Sequence[int], seed: int = 0) -> dict[str, float | None]:
    """TED_dice of ``model`` on training-like batches of each size in ``batch_sizes`` (the model's own training
    patch), and the BatchRenorm clip rate on them: ``ted_dice_m<B>``, ``clip_rate_m<B>`` (None without BatchRenorm
    layers), and ``clip_rate``, ``clip_rate_r``, ``clip_rate_d`` at the model's training batch size."""
    metadata = model_metadata(model)
    patch = tuple(metadata.get("patch_size") or (256,) * (image.ndim - 1))
    trained_at = int(metadata.get("batch_size") or 2)
    source = open_image(image, spatial_dims=image.ndim - 1)
    normalization = compute_normalization(source, resolve_normalization(IntensityNormalization("auto"), model))
    values: dict[str, float | None] = {}
    for size in sorted({*batch_sizes, trained_at}):
        with counting_clips() as clips:
            disparity = train_eval_disparity(model, source, normalization=normalization, patch_size=patch,
                                             batch_size=size, batches=max(8, math.ceil(TED_PATCHES / size)),
                                             ground_truth=mask[0] if mask.ndim == image.ndim else mask, seed=seed,
                                             foreground_fraction=training_foreground_fraction(model))
        if size in batch_sizes:  # the training batch size is measured for the clip rate even when not asked
            values[f"ted_dice_m{size}"] = disparity.ted_dice
            values[f"clip_rate_m{size}"] = clips.rate()
        if size == trained_at:
            values.update(clip_rate=clips.rate(), clip_rate_r=clips.rate("r"), clip_rate_d=clips.rate("d"))
    return values


def _prediction(model: nn.Module, image: np.ndarray, config: PredictConfig) -> np.ndarray:
    from seamfree.tiling.predict import predict

    return np.asarray(predict(model, image, config=config), dtype=np.float32)


def stitching_arm(model: nn.Module, image: np.ndarray, mask: np.ndarray, *, core: Sequence[int], halo: Any = "auto",
                  overlaps: Sequence[float] = (0.25, 0.5)) -> dict[str, float | None]:
    """Crop stitching and Gaussian blend stitching at each of ``overlaps`` (a fraction of the core) on the same
    core: ``dice_<mode>`` against ``mask``, and ``shift_abs_<mode>``, the mean |Δ| between the prediction of the
    image and that of the image cut by half a tile step at the start of every axis (so that every tile boundary
    moves to the middle of a former tile), compared one core away from the image's borders (mode "crop" or
    :func:`blend_key`)."""
    core = tuple(int(c) for c in core)
    modes: dict[str, dict[str, Any]] = {"crop": {"stitching": "crop"}}
    for overlap in overlaps:
        modes[blend_key(overlap)] = {"stitching": "blend", "blend_window": "gaussian",
                                     "overlap": tuple(max(1, round(c * overlap)) for c in core)}
    truth = mask[0] if mask.ndim == image.ndim else mask
    inner = (slice(None), *(slice(c, -c) for c in core))
    # one intensity normalization (the whole image's) for both: the cut image's own percentiles would differ
    normalization = compute_normalization(open_image(image, spatial_dims=image.ndim - 1),
                                          resolve_normalization(IntensityNormalization("auto"), model))
    values: dict[str, float | None] = {}
    for mode, options in modes.items():
        # half the step between tile starts (the core less the overlap): every tile boundary moves to where the
        # previous grid had the middle of a tile
        step = [c - o for c, o in zip(core, options.get("overlap", (0,) * len(core)))]
        start = (slice(None), *(slice(s // 2, None) for s in step))
        if any(n <= s // 2 + 2 * c for n, s, c in zip(image.shape[1:], step, core)):
            continue  # too small to compare away from the borders
        config = PredictConfig(core=core, halo=halo, allow_small_halo=True, tile_timing=False,
                               normalization=normalization, **options)
        first = _prediction(model, image, config)
        second = _prediction(model, image[start], config)
        masks = masks_from_ground_truth(truth, first.shape[0], image.shape[1:])
        predicted = binarize(first, activation="none", threshold=0.5)
        values[f"dice_{mode}"] = float(np.mean([dice(predicted[c], masks[c]) for c in range(first.shape[0])]))
        values[f"shift_abs_{mode}"] = float(np.abs(first[start][inner] - second[inner]).mean(dtype=np.float64))
    return values
