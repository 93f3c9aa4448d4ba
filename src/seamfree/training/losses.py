"""Segmentation losses on logits: soft Dice, binary cross-entropy, and their sum."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from seamfree.errors import ConfigError

__all__ = ["LOSSES", "bce_loss", "dice_bce_loss", "dice_loss", "get_loss"]


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Return 1 − soft Dice of sigmoid(logits) and target, per channel over the batch, averaged."""
    probabilities = torch.sigmoid(logits.float())
    dims = [0, *range(2, logits.dim())]
    intersection = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return 1.0 - ((2 * intersection + eps) / (total + eps)).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Return binary cross-entropy with logits, averaged over voxels."""
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def dice_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Return dice_loss + bce_loss."""
    return dice_loss(logits, target) + bce_loss(logits, target)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"dice": dice_loss, "bce": bce_loss,
                                                           "dice_bce": dice_bce_loss}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Return the loss function called ``name``."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
