"""Normalization layers by name, as timm does: a class getter and an instance creator.

===================  =====================================================  ==========================
name                 statistics at inference                                 tile-dependent at eval?
===================  =====================================================  ==========================
``batch``            running (BatchNorm)                                     no
``batchrenorm``      running (BatchRenorm, the recommended default)          no
``instance``         per tile and channel (InstanceNorm, affine)             yes
``instance_tracked`` running; instance statistics only in training           no
``group``            per tile and channel group (GroupNorm)                  yes
``layer``            per voxel, over channels (ConvNeXt-style LayerNorm)     no
``layer_spatial``    per tile, over channels and space (GroupNorm(1, C))      yes
``none``             no normalization (Identity)                             no
===================  =====================================================  ==========================
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from seamfree.errors import ConfigError
from seamfree.layers.batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d

__all__ = [
    "NORM_NAMES",
    "ChannelLayerNorm",
    "SpatialLayerNorm",
    "create_norm_layer",
    "get_norm_layer",
    "group_count",
]

NORM_NAMES = ("batch", "batchrenorm", "instance", "instance_tracked", "group", "layer", "layer_spatial", "none")

_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_RENORM = {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


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


def _group_norm(num_features: int, *, num_groups: int | None = None, eps: float = 1e-5) -> nn.GroupNorm:
    groups = group_count(num_features) if num_groups is None else num_groups
    if num_features % groups:
        raise ConfigError(
            f"GroupNorm needs num_features divisible by num_groups, got {num_features} and {groups}; "
            f"pass num_groups={group_count(num_features)}"
        )
    return nn.GroupNorm(groups, num_features, eps=eps)


def _identity(num_features: int) -> nn.Module:
    return nn.Identity()


def _check_name(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key not in NORM_NAMES:
        close = difflib.get_close_matches(key, NORM_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown normalization {name!r}{hint}; known names: {', '.join(NORM_NAMES)}")
    return key


def get_norm_layer(name: str, spatial_dims: int = 2) -> Callable[..., nn.Module]:
    """Return the constructor of normalization ``name`` for ``spatial_dims``-D feature maps.

    The constructor takes ``num_features`` first and the layer's own keyword options.

    Examples
    --------
    >>> get_norm_layer("batch", 3).__name__
    'BatchNorm3d'
    """
    key = _check_name(name)
    if spatial_dims not in (1, 2, 3):
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    table: dict[str, Callable[..., nn.Module]] = {
        "batch": _BATCH[spatial_dims],
        "batchrenorm": _RENORM[spatial_dims],
        "instance": partial(_INSTANCE[spatial_dims], affine=True),
        "instance_tracked": partial(_INSTANCE[spatial_dims], affine=True, track_running_stats=True),
        "group": _group_norm,
        "layer": ChannelLayerNorm,
        "layer_spatial": SpatialLayerNorm,
        "none": _identity,
    }
    return table[key]


def create_norm_layer(
    name: str, num_features: int, spatial_dims: int = 2, options: dict[str, object] | None = None
) -> nn.Module:
    """Return a new normalization layer ``name`` for ``num_features`` channels.

    Parameters
    ----------
    name : str
        One of :data:`NORM_NAMES`.
    num_features : int
        Number of channels normalized.
    spatial_dims : int
        1, 2 or 3.
    options : dict, optional
        Keyword options of the layer (e.g. ``{"warmup_steps": 500}`` for BatchRenorm, ``{"num_groups": 4}``
        for GroupNorm).

    Examples
    --------
    >>> create_norm_layer("group", 16)
    GroupNorm(8, 16, eps=1e-05, affine=True)
    """
    constructor = get_norm_layer(name, spatial_dims)
    try:
        return constructor(num_features, **(options or {}))
    except TypeError as exc:
        raise ConfigError(f"invalid options {options!r} for normalization {name!r}: {exc}") from exc
