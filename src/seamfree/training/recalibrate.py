"""Recalibrate a model's running statistics on target images (the cheap fix for a domain shift)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from seamfree.data.patches import foreground_points, patch_origin
from seamfree.errors import ConfigError
from seamfree.io.readers import open_image
from seamfree.layers.convert import recalibrate_norm
from seamfree.models.checkpoint import model_metadata
from seamfree.models.describe import describe_model
from seamfree.tiling.engine import read_window
from seamfree.tiling.grid import as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.plan import check_model_input

__all__ = ["recalibrate_on_images", "recorded_foreground_fraction"]

logger = logging.getLogger(__name__)


def recalibrate_on_images(
    model: nn.Module,
    images: Sequence[Any],
    *,
    patch_size: int | tuple[int, ...],
    batch_size: int = 4,
    batches: int = 32,
    seed: int = 0,
    device: str = "cpu",
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    output: int | str | None = None,
    masks: Sequence[Any] | None = None,
    foreground_fraction: float | None = None,
) -> nn.Module:
    """Return ``model`` (modified in place) with running statistics re-estimated on patches of ``images``.

    Patches of ``patch_size`` are drawn (seeded) from every image, each image normalized with its own global
    intensity statistics as in prediction; the statistics are plain averages over ``batches`` batches of
    ``batch_size`` (:func:`~seamfree.layers.recalibrate_norm`). With ``masks`` (one per image, its spatial shape;
    any channel axis first) the patches are drawn as training draws them: centred on a random foreground voxel
    with probability ``foreground_fraction`` (default: the model's recorded training value, else 0.5), anywhere
    otherwise. Without masks, anywhere: on sparse targets such batches hold less foreground than training batches
    did, and their statistics differ. ``spatial_dims``, ``in_channels`` and ``output`` describe foreign models
    (see :func:`~seamfree.models.describe_model`).
    """
    if not images:
        raise ConfigError("recalibration needs at least one image, got none")
    if masks is not None and len(masks) != len(images):
        raise ConfigError(f"recalibration takes one mask per image, got {len(masks)} masks for {len(images)} images")
    fraction = recorded_foreground_fraction(model) if foreground_fraction is None else foreground_fraction
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"foreground_fraction must be between 0 and 1, got {fraction}")
    info = describe_model(model, spatial_dims=spatial_dims, in_channels=in_channels, output=output, probe=False)
    dims, stride = info.spatial_dims, info.network_stride
    patch = as_axis_tuple(patch_size, dims, "patch_size")
    rng = np.random.default_rng(seed)
    sources = [open_image(image, spatial_dims=dims) for image in images]
    try:
        for source in sources:
            check_model_input(source, info.in_channels, dims)
        norms = [compute_normalization(s, IntensityNormalization()) for s in sources]
        for source in sources:
            if any(p > n for p, n in zip(patch, source.spatial_shape)) or any(p % s for p, s in zip(patch, stride)):
                raise ConfigError(f"patch_size {patch} must fit the image {source.spatial_shape} and be a multiple of "
                                  f"the network stride {stride}")
        points = [_foreground(mask, source.spatial_shape) for mask, source in zip(masks, sources)] if masks \
            else [np.zeros((0, dims), dtype=np.int64) for _ in sources]

        def generate() -> Iterator[torch.Tensor]:
            for _ in range(batches):
                items = []
                for _ in range(batch_size):
                    k = int(rng.integers(len(sources)))
                    origin = patch_origin(rng, sources[k].spatial_shape, patch, points[k], fraction)
                    window = tuple(slice(o, o + p) for o, p in zip(origin, patch))
                    items.append(norms[k].apply(read_window(sources[k], window)))
                yield torch.from_numpy(np.stack(items))

        recalibrate_norm(model, generate(), device=device)
    finally:
        for source in sources:
            source.close()
    logger.info("recalibrated on %d batches of %d patches %s from %d image(s)%s", batches, batch_size, patch,
                len(images), f", {fraction:.0%} centred on foreground" if masks else ", drawn anywhere")
    return model


def recorded_foreground_fraction(model: nn.Module) -> float:
    """The training's share of foreground-centred patches, as the model's metadata records it (else 0.5)."""
    training = (model_metadata(model).get("train_config") or {}).get("training") or {}
    value = training.get("foreground_fraction")
    return float(value) if isinstance(value, int | float) else 0.5


def _foreground(mask: Any, spatial: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(mask)
    foreground = np.asarray(array.reshape(-1, *array.shape[-len(spatial):]).any(axis=0)) \
        if array.ndim > len(spatial) else array.astype(bool)
    if foreground.shape != spatial:
        raise ConfigError(f"a recalibration mask of shape {array.shape} does not match its image {spatial}")
    return foreground_points(foreground)
