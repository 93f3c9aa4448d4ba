"""Normalization layers the registry builds besides BatchRenorm: channel and spatial LayerNorm, GroupNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seamfree.errors import ConfigError

__all__ = ["ChannelLayerNorm", "SpatialLayerNorm", "group_count", "group_norm"]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (N, C, *spatial) tensor, separately at every voxel.

    Its statistics never mix voxels, so it is tile-independent (unlike LayerNorm over space).
    """

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = F_layer_norm_channels(x, self.eps)
        if self.weight is not None and self.bias is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def F_layer_norm_channels(x: Tensor, eps: float) -> Tensor:
    """Return ``x`` normalized over axis 1 (channels) at every position, statistics in float32."""
    x32 = x.float()
    var, mean = torch.var_mean(x32, dim=1, keepdim=True, correction=0)
    return ((x32 - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class SpatialLayerNorm(nn.GroupNorm):
    """LayerNorm over channels *and* space (GroupNorm with one group): statistics of the whole tile."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_features, eps=eps, affine=affine)


def group_count(num_features: int, preferred: int = 8) -> int:
    """Return the largest number of groups <= ``preferred`` that divides ``num_features``."""
    for groups in range(min(preferred, num_features), 0, -1):
        if num_features % groups == 0:
            return groups
    return 1


def group_norm(num_features: int, *, num_groups: int | None = None, eps: float = 1e-5) -> nn.GroupNorm:
    """Return a GroupNorm over ``num_features`` channels, with the largest group count <= 8 unless given."""
    groups = group_count(num_features) if num_groups is None else num_groups
    if num_features % groups:
        raise ConfigError(
            f"GroupNorm needs num_features divisible by num_groups, got {num_features} and {groups}; "
            f"pass num_groups={group_count(num_features)}"
        )
    return nn.GroupNorm(groups, num_features, eps=eps)
