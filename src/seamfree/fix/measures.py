"""What a fix measures: the agreement with the original on held-out data, exactness, seams and the train/eval
disparity, before and after."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from seamfree.diagnostics.seam_grid import find_seams
from seamfree.fix.config import FixConfig
from seamfree.fix.data import FixData, draw_batch
from seamfree.models.describe import select_output
from seamfree.tiling.plan import PredictConfig
from seamfree.tiling.predict import predict, predict_whole

__all__ = ["Agreement", "dice", "held_out_agreement", "masks_of", "measures", "probabilities", "train_eval_gap"]


@dataclass(frozen=True)
class Agreement:
    """The fixed model against the original on held-out data: masks' Dice, probabilities' largest and mean gap."""

    dice: float
    max_abs: float
    mean_abs: float
    held_out: str

    def to_dict(self) -> dict[str, Any]:
        return {"dice": self.dice, "max_abs": self.max_abs, "mean_abs": self.mean_abs, "held_out": self.held_out}


def probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    tensor = torch.from_numpy(np.asarray(logits, np.float32))
    if activation == "sigmoid":
        return torch.sigmoid(tensor).numpy()
    if activation == "softmax":
        return torch.softmax(tensor, 0).numpy()
    return tensor.numpy()


def masks_of(probabilities: np.ndarray, activation: str, threshold: float) -> np.ndarray:
    if activation == "softmax" and probabilities.shape[0] > 1:
        return np.argmax(probabilities, axis=0) > 0
    return probabilities[0] > threshold


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def held_out_agreement(student: nn.Module, data: FixData, teacher: list[np.ndarray], activation: str, config: FixConfig,
               output: Any) -> Agreement:
    """The student's whole-image prediction of the held-out data against the teacher's."""
    raw, _, target = data.held_out_pair(teacher)
    logits = np.asarray(predict_whole(student, raw, activation="none", output=output), np.float32)
    mine, theirs = probabilities(logits, activation), probabilities(target, activation)
    gap = np.abs(mine - theirs)
    return Agreement(dice(masks_of(mine, activation, config.threshold), masks_of(theirs, activation, config.threshold)),
                     float(gap.max()), float(gap.mean()), data.held_out)


def measures(model: nn.Module, data: FixData, teacher: list[np.ndarray], activation: str, config: FixConfig,
              ground_truth: Any, patch: tuple[int, ...], output: Any) -> dict[str, Any]:
    """Exactness (max |tiled − whole| on the held-out data, core = the training patch), train/eval disparity and,
    with ground truth, Dice against it."""
    raw, normalized, _ = data.held_out_pair(teacher)
    whole = np.asarray(predict_whole(model, raw, activation=cast(Any, activation), output=output), np.float32)
    core = tuple(max(16, min(p, n // 2)) for p, n in zip(patch, raw.shape[1:]))
    tiled = np.asarray(predict(model, raw, config=PredictConfig(core=core, activation=cast(Any, activation),
                                                                model_output=output, tile_timing=False)))
    seams = find_seams(tiled, period=core, offset=0, kind="values", spatial_dims=len(core))
    result: dict[str, Any] = {"tile_error": float(np.abs(tiled - whole).max()), "tile_core": list(core),
                              "ted_dice": train_eval_gap(model, normalized, patch, activation, config, output),
                              "seams": seams.summary, "seams_detected": seams.detected, "seams_z": seams.z}
    if ground_truth is not None:
        mask = np.asarray(ground_truth) > 0
        mask = mask.reshape(mask.shape[-len(patch):])
        if data.split is not None:
            mask = mask[..., data.split:]
        result["dice_ground_truth"] = dice(masks_of(whole, activation, config.threshold), mask)
    return result


def train_eval_gap(model: nn.Module, normalized: np.ndarray, patch: tuple[int, ...], activation: str,
                    config: FixConfig, output: Any) -> float | None:
    """1 − Dice between train-mode and eval-mode masks on batches of 2 patches (TED_dice at batch 2), or None
    for a model whose layers behave the same in both modes."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    rng = np.random.default_rng(config.seed + 1)
    size = tuple(min(p, n) for p, n in zip(patch, normalized.shape[1:]))
    pairs = [(normalized, normalized)]
    train_copy = copy.deepcopy(model).train()
    values = []
    with torch.no_grad():
        for _ in range(8):
            inputs, _ = draw_batch(pairs, size, 2, rng)
            batch = torch.from_numpy(inputs)
            train_out = probabilities(select_output(train_copy(batch), output).numpy().swapaxes(0, 1), activation)
            eval_out = probabilities(select_output(model.eval()(batch), output).numpy().swapaxes(0, 1), activation)
            values.append(1.0 - dice(masks_of(train_out, activation, config.threshold),
                                      masks_of(eval_out, activation, config.threshold)))
    return float(np.mean(values))
