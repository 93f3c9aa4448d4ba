"""Normalization layers by name, as timm does: a class getter and an instance creator.

The names and what each norm does at inference are in :mod:`seamfree.layers.registry`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from seamfree.errors import ConfigError
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm, group_count
from seamfree.layers.registry import NORM_NAMES, norm_spec

__all__ = [
    "NORM_NAMES",
    "ChannelLayerNorm",
    "SpatialLayerNorm",
    "create_norm_layer",
    "get_norm_layer",
    "group_count",
]


def get_norm_layer(name: str, spatial_dims: int = 2) -> Callable[..., nn.Module]:
    """Return the constructor of normalization ``name`` for ``spatial_dims``-D feature maps.

    The constructor takes ``num_features`` first and the layer's own keyword options.

    Examples
    --------
    >>> get_norm_layer("batch", 3).__name__
    'BatchNorm3d'
    """
    spec = norm_spec(name)
    if spatial_dims not in spec.layers:
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    return spec.layers[spatial_dims]


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
    >>> layer = create_norm_layer("group", 16)
    >>> type(layer).__name__, layer.num_groups, layer.num_channels
    ('GroupNorm', 8, 16)
    """
    constructor = get_norm_layer(name, spatial_dims)
    try:
        return constructor(num_features, **(options or {}))
    except TypeError as exc:
        raise ConfigError(f"invalid options {options!r} for normalization {name!r}: {exc}") from exc
