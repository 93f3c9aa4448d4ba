"""``diagnose(model, image)``: will tiling hurt this model on this image, why, and what to do.

Steps: norm audit → receptive field → the image region to work on (all of it up to ``max_voxels``) →
prediction A on the diagnosis grid → grid B shifted by half a core (tile mismatch) → seam score of A →
train/eval disparity on training-like batches → exactness of A against one whole-image forward (on the
largest region that fits in memory) → a plain-language recommendation and a suggested tiling for the image.
Cost: about two tiled predictions of the region plus one whole forward (``benchmarks/diagnose.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from torch import nn

from seamfree.config import apply_renamed
from seamfree.diagnostics.disparity import (
    TrainEvalDisparity,
    ted_batch_count,
    train_eval_disparity,
    training_foreground_fraction,
)
from seamfree.diagnostics.exactness import ExactnessCheck, exactness_check, whole_forward_crop
from seamfree.diagnostics.instances import InstanceMismatch, instance_scores, instance_tile_mismatch
from seamfree.diagnostics.mismatch import TileMismatch, shifted_tiles, tile_mismatch
from seamfree.diagnostics.recommend import Recommendation, recommend
from seamfree.diagnostics.seams import SeamScore, seam_score
from seamfree.errors import ConfigError, ShapeError
from seamfree.io.readers import open_image
from seamfree.io.writers import ArrayOutput
from seamfree.layers.audit import NormAudit
from seamfree.metrics import binarize, dice, masks_from_ground_truth
from seamfree.models.checkpoint import auto_device, model_metadata
from seamfree.models.describe import ModelInfo, describe_model
from seamfree.models.receptive import ReceptiveField
from seamfree.tiling.engine import read_window, run_tiles
from seamfree.tiling.grid import TileGrid, as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization, resolve_normalization
from seamfree.tiling.plan import PredictConfig, check_model_input, plan_prediction
from seamfree.tiling.sinks import CropSink
from seamfree.tiling.suggest import TilingSuggestion, default_memory_budget, suggest_tiling

__all__ = ["DiagnoseConfig", "Diagnosis", "diagnose"]

logger = logging.getLogger(__name__)

# 2: TM/TED fields named tm_*/ted_*, geometry.grid_offset, tile pairs' region and abs_difference
SCHEMA_VERSION = 3  # 3: instances, instance_scores


@dataclass(frozen=True)
class DiagnoseConfig:
    """Options of :func:`diagnose`.

    Attributes
    ----------
    core : int or tuple, optional
        Core of the diagnosis grid. Default: the core ``predict`` would choose, at most half the region per
        axis, so that there are seams to look at.
    halo : "auto", int or tuple
        Halo; "auto" is the halo the measured receptive field needs.
    grid_offset : int or tuple, optional
        Shift of grid B against grid A (default: half the core).
    normalization : IntensityNormalization
        Input intensities (statistics from the whole image, once).
    patch_size, batch_size : optional
        The model's training patch and training batch size, for TED batches formed like training batches;
        default from the checkpoint metadata, else 256 (2D) / 64 (3D) per axis and 2.
    ted_batches : int, optional
        Number of batches for TED; default enough for 32 patches and at least 8 batches
        (:func:`~seamfree.diagnostics.disparity.ted_batch_count`: 32 batches for a batch-1 model).
    ted_sampling : {"training", "uniform"}
        Where TED patches lie, with ground truth: "training" centres the model's training share of them
        (``foreground_fraction`` of its recorded training configuration, else 0.5) on a foreground voxel, as
        its training batches were drawn; "uniform" draws all anywhere. Without ground truth, anywhere.
    activation : {"auto", "none", "sigmoid", "softmax"}
    threshold : float
        θ for Dice-based indicators.
    max_voxels : int
        Larger images are diagnosed on a central region of about this many voxels.
    objects : {"foreground", "background"}
        What the instance-level tile mismatch labels: the connected components of the predicted foreground
        (nuclei, mitochondria), or of the background (the cells between predicted membranes).
    region : tuple of (start, stop), optional
        Explicit region (image coordinates) instead of the central one.
    spatial_dims, in_channels : int, optional
        The model's input, for models whose first convolution does not tell (CLI ``--spatial-dims``,
        ``--in-channels``).
    model_output : int or str, optional
        Index or key of the segmentation among a tuple/dict model output (CLI ``--output``).
    memory_budget : int, optional
        Bytes for the whole-image forward of the exactness check (default as for ``predict``).
    device : str
    seed : int
        Seed of the TED patch positions.
    offset : int or tuple, optional
        Deprecated name of ``grid_offset``.
    """

    core: int | tuple[int, ...] | None = None
    halo: Literal["auto"] | int | tuple[int, ...] = "auto"
    grid_offset: int | tuple[int, ...] | None = None
    normalization: IntensityNormalization = field(default_factory=lambda: IntensityNormalization("auto"))
    patch_size: int | tuple[int, ...] | None = None
    batch_size: int | None = None
    ted_batches: int | None = None
    ted_sampling: str = "training"
    activation: Literal["auto", "none", "sigmoid", "softmax"] = "auto"
    threshold: float = 0.5
    max_voxels: int = 1 << 24
    objects: str = "foreground"
    region: tuple[tuple[int, int], ...] | None = None
    memory_budget: int | None = None
    device: str = "cpu"
    seed: int = 0
    spatial_dims: int | None = None
    in_channels: int | None = None
    model_output: int | str | None = None
    offset: int | tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        apply_renamed(self, "offset", "grid_offset")
        if self.device == "auto":  # CUDA, then MPS, then the CPU
            object.__setattr__(self, "device", auto_device())
        if self.ted_batches is not None and self.ted_batches < 1:
            raise ConfigError(f"ted_batches must be >= 1, got {self.ted_batches}")
        if self.ted_sampling not in ("training", "uniform"):
            raise ConfigError(f"ted_sampling must be 'training' (patches centred on foreground like training "
                              f"patches) or 'uniform', got {self.ted_sampling!r}")
        if not 0.0 < self.threshold < 1.0 and self.activation != "none":
            raise ConfigError(f"threshold must lie in (0, 1) for probabilities, got {self.threshold}")
        if self.max_voxels < 1:
            raise ConfigError(f"max_voxels must be positive, got {self.max_voxels}")
        if self.objects not in ("foreground", "background"):
            raise ConfigError(f"objects must be 'foreground' (nuclei, mitochondria) or 'background' (the cells between "
                              f"predicted membranes), got {self.objects!r}")
        patch = (self.patch_size,) if isinstance(self.patch_size, int) else self.patch_size
        if patch is not None and min(patch) < 1:
            raise ConfigError(f"patch_size (CLI --patch-size) must be positive on every axis, got {self.patch_size}; "
                              "pass the model's training patch, or leave it out to read it from the checkpoint")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size (CLI --batch-size) must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Diagnosis:
    """Everything :func:`diagnose` found; ``to_dict`` is the JSON report (schema in docs/diagnose.md)."""

    name: str
    audit: NormAudit
    receptive_field: ReceptiveField
    geometry: dict[str, Any]
    tile_mismatch: TileMismatch
    disparity: TrainEvalDisparity
    seams: SeamScore
    exactness: ExactnessCheck
    recommendation: Recommendation
    suggested_tiling: TilingSuggestion
    dice: float | None
    seconds: dict[str, float]
    image: np.ndarray = field(repr=False, compare=False)
    prediction: np.ndarray = field(repr=False, compare=False)
    model: ModelInfo | None = None
    instances: InstanceMismatch | None = None
    instance_scores: dict[str, float | int] | None = None

    def to_dict(self) -> dict[str, Any]:
        suggestion = self.suggested_tiling
        return {
            "schema_version": SCHEMA_VERSION, "name": self.name, "audit": self.audit.to_dict(),
            "receptive_field": self.receptive_field.to_dict(), "geometry": self.geometry,
            "tile_mismatch": self.tile_mismatch.to_dict(), "train_eval_disparity": self.disparity.to_dict(),
            "seams": self.seams.to_dict(), "exactness": self.exactness.to_dict(),
            "recommendation": self.recommendation.to_dict(),
            "suggested_tiling": {"core": list(suggestion.core), "halo": list(suggestion.halo),
                                 "tiles_per_batch": suggestion.tiles_per_batch,
                                 "compute_ratio": suggestion.compute_ratio},
            "dice": self.dice, "seconds": self.seconds,
            "instances": None if self.instances is None else self.instances.to_dict(),
            "instance_scores": self.instance_scores,
            "model": None if self.model is None else self.model.to_dict(),
        }


def diagnose(
    model: nn.Module,
    image: Any,
    *,
    ground_truth: Any = None,
    config: DiagnoseConfig | None = None,
    axes: str | None = None,
    name: str = "model",
    key: str | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Diagnosis:
    """Return the diagnosis of ``model`` on ``image``: audit, TM, TED, seam score, exactness, advice.

    Parameters
    ----------
    model : nn.Module
        Segmentation model whose output has the input's spatial shape. Left unchanged (parameters,
        running statistics, schedule counters, mode).
    image : array-like or path
        2D/3D image, ``(C, *spatial)`` or ``spatial``, or a path readable by :func:`open_image`.
    ground_truth : array-like or path, optional
        Mask or labels of the image's spatial shape: adds Dice of the tiled prediction and ΔDice to TED.
    config : DiagnoseConfig, optional
    axes : str, optional
        Axis order of ``image`` when it is not channel-first.
    name : str
        Label of the model in reports.
    key : str, optional
        Dataset inside an HDF5 file or array inside a zarr group (CLI ``--key``).
    progress : callable, optional
        Called as ``progress(stage, fraction)`` before each stage ("tiled prediction", "tile mismatch",
        "train/eval disparity", "exactness"; "done" at the end) with the fraction of the work done; an exception
        it raises stops the diagnosis there (the napari plugin's cancel button).

    Examples
    --------
    >>> import numpy as np
    >>> from seamfree.models import UNet
    >>> net = UNet(2, 1, 1, depth=2, features=4, norm="instance")
    >>> d = diagnose(net, np.random.rand(96, 96), config=DiagnoseConfig(core=32, patch_size=32, ted_batches=1))
    >>> d.recommendation.verdict, d.disparity.ted_dice
    ('tiling artifacts', 0.0)
    """
    config = config or DiagnoseConfig()
    info = describe_model(model, spatial_dims=config.spatial_dims, in_channels=config.in_channels,
                          output=config.model_output, activation=config.activation)
    dims = info.spatial_dims
    with open_image(image, spatial_dims=dims, axes=axes, key=key) as source:
        check_model_input(source, info.in_channels, dims)
        normalization = compute_normalization(source, resolve_normalization(config.normalization, model))
        window = _region(source.spatial_shape, config)
        region = read_window(source, window)
        full_shape = source.spatial_shape
    gt = _ground_truth(ground_truth, full_shape, window, dims)
    return _diagnose_region(model, info, region, window, full_shape, gt, normalization, config, name, progress)


def _diagnose_region(model: nn.Module, info: ModelInfo, region: np.ndarray, window: tuple[slice, ...],
                     full_shape: tuple[int, ...], gt: np.ndarray | None, normalization: IntensityNormalization,
                     config: DiagnoseConfig, name: str,
                     progress: Callable[[str, float], None] | None = None) -> Diagnosis:
    def stage(label: str, fraction: float) -> None:
        if progress is not None:
            progress(label, fraction)

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    dims, stride = info.spatial_dims, info.network_stride
    audit, rf = info.audit, info.receptive_field
    halo = rf.halo if config.halo == "auto" else as_axis_tuple(config.halo, dims, "halo")
    seconds["receptive_field"] = _lap(clock)
    source = open_image(region, spatial_dims=dims)
    grid_a, grid_b = _grids(model, info, source.spatial_shape, halo, config)
    predict_config = PredictConfig(core=grid_a.core, halo=grid_a.halo, normalization=normalization,
                                   activation=config.activation, threshold=config.threshold,
                                   device=config.device, allow_small_halo=True, tiles_per_batch=1,
                                   spatial_dims=config.spatial_dims, in_channels=config.in_channels,
                                   model_output=config.model_output)
    clock = time.perf_counter()
    stage("tiled prediction", 0.0)
    plan = plan_prediction(model, source, predict_config, normalization, info=info)
    activation = plan.activation
    first = np.zeros(plan.output_shape, np.float32)
    run_tiles(model, plan, source, list(grid_a.tiles()), CropSink(ArrayOutput(first), plan.output))
    seconds["prediction"] = _lap(clock)
    stage("tile mismatch", 0.3)
    second = np.full_like(first, np.nan)  # NaN where grid B does not predict
    run_tiles(model, plan, source, shifted_tiles(grid_b), CropSink(ArrayOutput(second), plan.output))
    mismatch = tile_mismatch(first, second, grid_a, grid_b, activation=activation, threshold=config.threshold)
    instances = instance_tile_mismatch(first, second, activation=activation, threshold=config.threshold,
                                       objects=config.objects)
    seconds["tile_mismatch"] = _lap(clock) - seconds["prediction"]
    clock = time.perf_counter()
    seams = seam_score(first, grid_a, reference=(second, grid_b))
    stage("train/eval disparity", 0.6)
    patch, batch_size = _training_batch(model, dims, config)
    disparity = train_eval_disparity(model, source, normalization=normalization, patch_size=patch,
                                     batch_size=batch_size, batches=config.ted_batches or ted_batch_count(batch_size),
                                     ground_truth=gt,
                                     runtime=plan.runtime, threshold=config.threshold, seed=config.seed,
                                     info=info, foreground_fraction=0.0 if config.ted_sampling == "uniform"
                                     else training_foreground_fraction(model))
    seconds["train_eval_disparity"] = _lap(clock)
    clock = time.perf_counter()
    stage("exactness", 0.75)
    budget = config.memory_budget or default_memory_budget(config.device)
    exactness = exactness_check(model, source, first, config=predict_config,
                                region=whole_forward_crop(model, source.spatial_shape, budget, info))
    seconds["exactness"] = _lap(clock)
    dice_tiled = scores = None
    if gt is not None:
        masks = masks_from_ground_truth(gt, first.shape[0], source.spatial_shape)
        predicted = binarize(first, activation=activation, threshold=config.threshold)
        dice_tiled = float(np.mean([dice(predicted[c], masks[c]) for c in range(first.shape[0])]))
        if first.shape[0] == 1 and gt.shape == source.spatial_shape:  # foreground objects against instances
            scores = instance_scores(first, gt, activation=activation, threshold=config.threshold,
                                     objects=config.objects)
    suggestion = suggest_tiling(model, full_shape, memory_budget=config.memory_budget, device=config.device,
                                info=info)
    geometry = {
        "image_shape": list(full_shape), "region": [[w.start, w.stop] for w in window],
        "core": list(grid_a.core), "halo": list(grid_a.halo), "grid_offset": [c // 2 for c in grid_a.core]
        if config.grid_offset is None else list(as_axis_tuple(config.grid_offset, dims, "grid_offset")),
        "tile_shape": list(grid_a.tile_shape), "grid_shape": list(grid_a.grid_shape),
        "network_stride": list(stride), "compute_ratio": grid_a.compute_ratio,
        "normalization": normalization.to_dict(), "activation": activation, "threshold": config.threshold,
    }
    advice = recommend(audit, rf, grid_a.halo, mismatch, disparity, seams, exactness, suggestion, info)
    stage("done", 1.0)
    return Diagnosis(name, audit, rf, geometry, mismatch, disparity, seams, exactness, advice, suggestion,
                     dice_tiled, seconds, region, first, info, instances, scores)


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _region(shape: tuple[int, ...], config: DiagnoseConfig) -> tuple[slice, ...]:
    if config.region is not None:
        window = tuple(slice(int(a), int(b)) for a, b in config.region)
        if len(window) != len(shape) or any(not 0 <= w.start < w.stop <= n for w, n in zip(window, shape)):
            raise ConfigError(f"region {config.region} is not a non-empty box inside the image {shape}; "
                              f"give one (start, stop) pair per spatial axis")
        return window
    if math.prod(shape) <= config.max_voxels:
        return tuple(slice(0, n) for n in shape)
    factor = (config.max_voxels / math.prod(shape)) ** (1 / len(shape))
    extent = [min(n, max(1, int(n * factor))) for n in shape]
    window = tuple(slice((n - e) // 2, (n - e) // 2 + e) for n, e in zip(shape, extent))
    logger.info("the image %s is larger than max_voxels: diagnosing the central region %s", shape,
                [(w.start, w.stop) for w in window])
    return window


def _ground_truth(ground_truth: Any, shape: tuple[int, ...], window: tuple[slice, ...],
                  dims: int) -> np.ndarray | None:
    if ground_truth is None:
        return None
    with open_image(ground_truth, spatial_dims=dims) as gt_source:
        if gt_source.spatial_shape != shape:
            raise ShapeError(f"ground truth has spatial shape {gt_source.spatial_shape}, the image {shape}; "
                             "pass the mask of this image")
        gt = gt_source.read(window)
    return gt[0] if gt.shape[0] == 1 else gt


def _grids(model: nn.Module, info: ModelInfo, shape: tuple[int, ...], halo: tuple[int, ...],
           config: DiagnoseConfig) -> tuple[TileGrid, TileGrid]:
    dims, stride = len(shape), info.network_stride
    if config.core is None:
        suggested = suggest_tiling(model, shape, memory_budget=config.memory_budget, device=config.device,
                                   receptive_field=replace(info.receptive_field, radius=halo), info=info).core
        core = tuple(min(c, max(s, n // 2 // s * s)) for c, n, s in zip(suggested, shape, stride))
    else:
        core = as_axis_tuple(config.core, dims, "core")
    grid_a = TileGrid.create(shape, core, halo, network_stride=stride)
    offset = tuple(c // 2 for c in grid_a.core) if config.grid_offset is None else config.grid_offset
    grid_b = TileGrid.create(shape, grid_a.core, halo, network_stride=stride, offset=offset)
    if len(grid_a) < 2 or not shifted_tiles(grid_b):
        largest = tuple(max(s, (n - 2 * h) // 2 // s * s) for n, h, s in zip(shape, halo, stride))
        raise ShapeError(
            f"tile mismatch needs at least two overlapping tiles, but the image region {shape} fits in one tile "
            f"(core {grid_a.core}, halo {grid_a.halo}); pass a smaller core, e.g. core={largest}, or a larger "
            f"image (at least {tuple(2 * c + 2 * h for c, h in zip(grid_a.core, grid_a.halo))})"
        )
    return grid_a, grid_b


def _training_batch(model: nn.Module, dims: int, config: DiagnoseConfig) -> tuple[tuple[int, ...], int]:
    metadata = model_metadata(model)
    patch = config.patch_size or metadata.get("patch_size") or (256 if dims == 2 else 64)
    batch_size = config.batch_size or int(metadata.get("batch_size") or 2)
    return as_axis_tuple(patch, dims, "patch_size"), batch_size
