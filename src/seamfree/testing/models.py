"""Reproducible untrained models whose normalization layers behave like trained ones."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


@torch.no_grad()
def randomize_norm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Return ``model`` with random, non-trivial running statistics and affine parameters (in place).

    Fresh norm layers have mean 0 / variance 1 and identity affine maps, which hides bugs that only show with
    trained statistics; this gives every layer its own.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _NormBase):
            if module.running_mean is not None and module.running_var is not None:
                module.running_mean.uniform_(-0.3, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            if module.affine:
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    return model
