"""Train/eval disparity (TED): does the model predict differently with batch statistics than with running ones?

Batches are formed like training batches (random patches of the training patch size, the training batch
size). Each batch is predicted twice: in eval mode (running statistics) and with "train-mode normalization":
every normalization layer normalizes with the statistics of the current batch, as in training, but no
running statistic, BatchRenorm schedule counter or weight changes, and dropout stays off. The second pass
runs on a private copy of the model, so the caller's model is left exactly as it was.

``TED_dice = 1 − Dice(P_train > θ, P_eval > θ)``, ``TED_abs = mean |P_train − P_eval|``, pooled over all
patches; with ground truth also ``ΔDice = Dice(P_train, GT) − Dice(P_eval, GT)``. Zero by construction for
norms without running statistics (the same computation in both modes). Each comes with its standard error over
batches (the spread of the per-batch values / √batches): a batch-1 model's ΔDice judged on 8 patches moved by
0.3 between draws, so :func:`ted_batch_count` asks for at least 32 patches and 8 batches.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from seamfree.config import deprecated_alias
from seamfree.data.patches import foreground_points, patch_origin
from seamfree.errors import ConfigError
from seamfree.io.readers import ImageSource
from seamfree.metrics import binarize, dice, masks_from_ground_truth
from seamfree.models.checkpoint import model_metadata
from seamfree.models.describe import ModelInfo, describe_model
from seamfree.tiling.engine import eval_mode, forward_batch, read_window, resolve_activation
from seamfree.tiling.grid import as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization
from seamfree.tiling.specs import RuntimeSpec

__all__ = ["MIN_TED_BATCHES", "MIN_TED_PATCHES", "TrainEvalDisparity", "batch_statistics_copy", "ted_batch_count",
           "train_eval_disparity", "training_foreground_fraction"]

logger = logging.getLogger(__name__)

MIN_TED_PATCHES = 32  # patches per image: a batch-1 model's ΔDice on 8 patches was -0.46, on 64 batches -0.12..-0.16
MIN_TED_BATCHES = 8


def ted_batch_count(batch_size: int) -> int:
    """Return the default number of TED batches of ``batch_size``: at least 8 batches and 32 patches."""
    return max(MIN_TED_BATCHES, -(-MIN_TED_PATCHES // max(1, batch_size)))


@dataclass(frozen=True)
class TrainEvalDisparity:
    """Train/eval disparity of one model on patches of one image (channel values averaged).

    Attributes
    ----------
    ted_dice, ted_abs : float
        TED_dice (1 − Dice of train-mode vs eval-mode masks: 0 when they agree) and TED_abs.
    per_channel : list of dict
    delta_dice : float or None
        Dice(train-mode, GT) − Dice(eval, GT), with ground truth.
    dice_train, dice_eval : float or None
        The two Dice scores against ground truth.
    patch_size : tuple of int
    batch_size, batches : int
    layers_with_running_statistics : int
        Normalization layers whose behaviour differs between the two modes.
    """

    ted_dice: float
    ted_abs: float
    per_channel: list[dict[str, float]]
    delta_dice: float | None
    dice_train: float | None
    dice_eval: float | None
    patch_size: tuple[int, ...]
    batch_size: int
    batches: int
    layers_with_running_statistics: int
    foreground_fraction: float = 0.0  # the share of patches centred on ground-truth foreground (0: uniform)
    patches_with_foreground: float | None = None  # the share of patches that hold ground-truth foreground
    ted_dice_se: float | None = None  # standard errors over batches (None for one batch)
    delta_dice_se: float | None = None

    dice = deprecated_alias("dice", "ted_dice")
    abs = deprecated_alias("abs", "ted_abs")

    def to_dict(self) -> dict[str, Any]:
        return {"ted_dice": self.ted_dice, "ted_abs": self.ted_abs, "per_channel": self.per_channel,
                "delta_dice": self.delta_dice, "dice_train": self.dice_train, "dice_eval": self.dice_eval,
                "patch_size": list(self.patch_size), "batch_size": self.batch_size, "batches": self.batches,
                "layers_with_running_statistics": self.layers_with_running_statistics,
                "foreground_fraction": self.foreground_fraction,
                "patches_with_foreground": self.patches_with_foreground,
                "ted_dice_se": self.ted_dice_se, "delta_dice_se": self.delta_dice_se,
                "sampling": "uniform" if self.foreground_fraction == 0 else "training"}


def training_foreground_fraction(model: nn.Module) -> float:
    """The share of training patches the model's sampler centred on foreground (its recorded training
    configuration's ``foreground_fraction``; 0.5, the trainer's default, when it recorded none)."""
    training = (model_metadata(model).get("train_config") or {}).get("training") or {}
    value = training.get("foreground_fraction")
    return float(value) if isinstance(value, int | float) else 0.5


def batch_statistics_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """Return a copy of ``model`` that normalizes with batch statistics and changes nothing, and a layer count.

    The copy is in train mode with dropout off; every layer with running statistics has momentum 0 (its
    running statistics stay as they are). Call :func:`_restore_counters` after each forward to undo the step
    counters that torch increments (BatchRenorm's schedule reads them).
    """
    twin = copy.deepcopy(model)
    twin.train()
    count = 0
    for module in twin.modules():
        name = str(getattr(module, "original_name", type(module).__name__))  # TorchScript keeps the class name
        if isinstance(module, nn.modules.dropout._DropoutNd | nn.Dropout) or name.startswith(("Dropout", "Alpha")):
            module.eval()
        statistics = isinstance(module, _NormBase) or name.startswith(("BatchNorm", "SyncBatchNorm", "InstanceNorm"))
        if statistics and bool(getattr(module, "track_running_stats", False)):
            # a compiled constant stays: the copy's running statistics drift, which its outputs never read
            with contextlib.suppress(AttributeError, RuntimeError, TypeError):
                module.momentum = 0.0  # type: ignore[assignment]
            count += 1
    return twin, count


def _counters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in model.named_buffers() if name.endswith("num_batches_tracked")}


def _restore_counters(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    for name, value in saved.items():
        buffers[name].copy_(value)


def _patch_origins(shape: tuple[int, ...], patch: tuple[int, ...], count: int, seed: int,
                   points: np.ndarray, foreground_fraction: float) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [patch_origin(rng, shape, patch, points, foreground_fraction) for _ in range(count)]


def _patch_size(info: ModelInfo, source: ImageSource, patch_size: int | tuple[int, ...]) -> tuple[int, ...]:
    dims, stride = info.spatial_dims, info.network_stride
    patch = as_axis_tuple(patch_size, dims, "patch_size")
    fitted = tuple(max(s, min(p, n) // s * s) for p, n, s in zip(patch, source.spatial_shape, stride))
    if any(f > n for f, n in zip(fitted, source.spatial_shape)):
        raise ConfigError(
            f"the image {source.spatial_shape} is smaller than one patch of the network stride {stride}; "
            "train/eval disparity needs a larger image"
        )
    if fitted != patch:
        logger.info("TED patch size %s adjusted to %s (image %s, network stride %s)", patch, fitted,
                    source.spatial_shape, stride)
    return fitted


@torch.no_grad()
def train_eval_disparity(
    model: nn.Module,
    source: ImageSource,
    *,
    normalization: IntensityNormalization,
    patch_size: int | tuple[int, ...],
    batch_size: int = 2,
    batches: int = 8,
    ground_truth: np.ndarray | None = None,
    runtime: RuntimeSpec | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    info: ModelInfo | None = None,
    foreground_fraction: float = 0.0,
) -> TrainEvalDisparity:
    """Return the train/eval disparity of ``model`` on random training-like batches of ``source``.

    ``normalization`` must be resolved (global statistics); ``ground_truth`` (spatial shape of the image)
    adds ΔDice; ``runtime`` gives the device, precision and activation ("auto" is resolved for the model) and
    ``threshold`` binarizes probabilities; ``info``: the model's description (made if not given). The model's
    parameters, buffers and mode are unchanged afterwards.

    ``foreground_fraction`` (with ``ground_truth``): the share of patches centred on a random foreground voxel,
    as the training sampler draws them (:mod:`seamfree.data.patches`); the others, or all of them at 0, lie
    anywhere. On sparse targets uniform batches are mostly background, so their train-mode statistics are
    unlike any training batch's: :func:`~seamfree.diagnostics.diagnose` passes the model's training value.
    """
    runtime = runtime or RuntimeSpec(activation="auto")
    info = info or describe_model(model, output=runtime.output, probe=False)
    if batch_size < 1 or batches < 1:
        raise ConfigError(f"batch_size and batches must be >= 1, got {batch_size} and {batches}")
    patch = _patch_size(info, source, patch_size)
    runtime = runtime.resolved(resolve_activation(model, runtime.activation), info.output)
    twin, count = batch_statistics_copy(model)
    counters = _counters(twin)
    eval_outputs: list[np.ndarray] = []
    train_outputs: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    with eval_mode(model):
        points = np.zeros((0, len(patch)), dtype=np.int64)
        if ground_truth is not None and foreground_fraction > 0:
            truth = np.asarray(ground_truth)
            points = foreground_points(truth.reshape(-1, *truth.shape[-len(patch):]).any(axis=0))
        origins = _patch_origins(source.spatial_shape, patch, batch_size * batches, seed, points,
                                 foreground_fraction if len(points) else 0.0)
        for first in range(0, len(origins), batch_size):
            windows = [tuple(slice(o, o + p) for o, p in zip(origin, patch))
                       for origin in origins[first:first + batch_size]]
            batch = np.stack([normalization.apply(read_window(source, w)) for w in windows])
            eval_outputs.append(forward_batch(model, batch, runtime))
            train_outputs.append(forward_batch(twin, batch, runtime))
            _restore_counters(twin, counters)
            if ground_truth is not None:
                truths.extend(np.asarray(ground_truth[w]) if ground_truth.ndim == len(patch)
                              else np.asarray(ground_truth[(slice(None), *w)]) for w in windows)
    p_eval = np.concatenate(eval_outputs)
    p_train = np.concatenate(train_outputs)
    holding = float(np.mean([bool(np.any(t)) for t in truths])) if truths else None
    return replace(_summarize(p_train, p_eval, truths, runtime.activation, threshold, patch, batch_size, batches,
                              count), foreground_fraction=foreground_fraction if len(points) else 0.0,
                   patches_with_foreground=holding)


def _summarize(p_train: np.ndarray, p_eval: np.ndarray, truths: list[np.ndarray], activation: str,
               threshold: float, patch: tuple[int, ...], batch_size: int, batches: int,
               count: int) -> TrainEvalDisparity:
    channels = p_eval.shape[1]
    # Pool all patches into one (C, N·patch) array so that Dice is computed over every voxel at once.
    train_flat = np.moveaxis(p_train, 1, 0).reshape(channels, -1)
    eval_flat = np.moveaxis(p_eval, 1, 0).reshape(channels, -1)
    m_train = binarize(train_flat, activation=activation, threshold=threshold)
    m_eval = binarize(eval_flat, activation=activation, threshold=threshold)
    per_channel = [{"ted_dice": _ted_dice(m_train[c], m_eval[c]),
                    "ted_abs": float(np.abs(train_flat[c] - eval_flat[c]).mean(dtype=np.float64))}
                   for c in range(channels)]
    delta = dice_train = dice_eval = None
    if truths:
        gt = np.concatenate([masks_from_ground_truth(t, channels, patch).reshape(channels, -1) for t in truths],
                            axis=1)
        dice_train = float(np.mean([dice(m_train[c], gt[c]) for c in range(channels)]))
        dice_eval = float(np.mean([dice(m_eval[c], gt[c]) for c in range(channels)]))
        delta = dice_train - dice_eval
    ted_se, delta_se = _standard_errors(m_train, m_eval, gt if truths else None, batches)
    return TrainEvalDisparity(
        float(np.mean([pc["ted_dice"] for pc in per_channel])), float(np.mean([pc["ted_abs"] for pc in per_channel])),
        per_channel, delta, dice_train, dice_eval, patch, batch_size, batches, count,
        ted_dice_se=ted_se, delta_dice_se=delta_se,
    )


def _ted_dice(train: np.ndarray, evaluated: np.ndarray) -> float:
    return 1.0 - dice(train, evaluated)


def _standard_errors(m_train: np.ndarray, m_eval: np.ndarray, gt: np.ndarray | None,
                     batches: int) -> tuple[float | None, float | None]:
    """Return the standard errors of TED_dice and ΔDice over ``batches`` equal parts of the pooled voxels."""
    if batches < 2:
        return None, None
    channels = m_train.shape[0]
    parts = np.array_split(np.arange(m_train.shape[1]), batches)  # the flat voxels are in batch order
    ted = [float(np.mean([_ted_dice(m_train[c, part], m_eval[c, part]) for c in range(channels)])) for part in parts]
    delta = None if gt is None else [
        float(np.mean([dice(m_train[c, part], gt[c, part]) - dice(m_eval[c, part], gt[c, part])
                       for c in range(channels)]))
        for part in parts]

    def se(values: list[float] | None) -> float | None:
        return None if values is None else float(np.std(values, ddof=1) / np.sqrt(len(values)))

    return se(ted), se(delta)
