"""Exactness check: tiled prediction against one whole-image forward on a region that fits in memory."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from seamfree.io.readers import ImageSource
from seamfree.metrics import binarize
from seamfree.models.describe import ModelInfo, describe_model
from seamfree.tiling.engine import read_window, resolve_activation
from seamfree.tiling.memory import forward_memory
from seamfree.tiling.plan import PredictConfig
from seamfree.tiling.predict import predict, predict_whole

__all__ = ["ExactnessCheck", "exactness_check", "whole_forward_crop"]

logger = logging.getLogger(__name__)

# Float32 results of different but mathematically equal convolutions differ by rounding only.
EXACT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ExactnessCheck:
    """Tiled vs whole-image prediction on ``region``.

    Attributes
    ----------
    max_abs, mean_abs : float
        Max and mean |tiled − whole| over the region and channels.
    flips : float
        Fraction of voxels whose binarized prediction differs.
    exact : bool
        ``max_abs <= tolerance``.
    region : tuple of slice
        Where it was checked (image coordinates).
    """

    max_abs: float
    mean_abs: float
    flips: float
    exact: bool
    tolerance: float
    region: tuple[slice, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "flips": self.flips, "exact": self.exact,
                "tolerance": self.tolerance, "region": [[s.start, s.stop] for s in self.region]}


def whole_forward_crop(model: nn.Module, spatial_shape: tuple[int, ...], memory_budget: int,
                       info: ModelInfo | None = None) -> tuple[slice, ...]:
    """Return the largest origin-anchored region whose whole-image forward fits ``memory_budget`` bytes."""
    info = info or describe_model(model, probe=False)
    in_channels, stride = info.in_channels, info.network_stride
    memory = forward_memory(model, in_channels, stride, digest=info.digest)
    shape = list(spatial_shape)
    while memory.bytes(math.prod(shape)) > memory_budget and max(shape) > 2 * max(stride):
        axis = int(np.argmax(shape))
        shape[axis] = max(stride[axis], shape[axis] // 2 // stride[axis] * stride[axis])
    return tuple(slice(0, s) for s in shape)


def exactness_check(
    model: nn.Module,
    source: ImageSource,
    tiled: np.ndarray | None,
    *,
    config: PredictConfig,
    region: tuple[slice, ...] | None = None,
    tolerance: float = EXACT_TOLERANCE,
) -> ExactnessCheck:
    """Return how far tiled prediction is from the whole-image forward on ``region``.

    ``tiled`` is the tiled prediction of the whole ``source`` when the caller has it and ``region`` is the
    whole image (no second tiled run is needed); otherwise the region is predicted tiled with ``config``.
    ``config.normalization`` must be resolved, so that the region is normalized like the whole image.
    """
    whole_region = tuple(slice(0, n) for n in source.spatial_shape)
    region = region or whole_region
    crop = read_window(source, region)
    whole = predict_whole(model, crop, normalization=config.normalization, activation=config.activation,
                          device=config.device, output=config.model_output)
    if tiled is None or region != whole_region:
        tiled = predict(model, crop, config=config)
    else:
        tiled = tiled[(slice(None), *region)]
    difference = np.abs(tiled - whole)
    activation = resolve_activation(model, config.activation)
    flips = float(np.mean(binarize(tiled, activation=activation, threshold=config.threshold)
                          != binarize(whole, activation=activation, threshold=config.threshold)))
    max_abs = float(difference.max())
    logger.info("exactness on %s: max |tiled − whole| %.2e", [(s.start, s.stop) for s in region], max_abs)
    return ExactnessCheck(max_abs, float(difference.mean(dtype=np.float64)), flips, max_abs <= tolerance,
                          tolerance, region)
