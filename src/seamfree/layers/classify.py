"""What one layer does at inference: the per-layer classification the norm audit is made of."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from seamfree.layers.batchrenorm import BatchRenormNd
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm
from seamfree.layers.registry import Statistics, norm_spec

__all__ = ["LayerAudit", "classify_layer", "looks_like_norm", "module_layers", "registry_name"]


@dataclass(frozen=True)
class LayerAudit:
    """How one layer behaves at inference.

    Attributes
    ----------
    name : str
        Qualified module name (``encoder.0.norm1``).
    type : str
        Class name.
    statistics : str
        What the layer normalizes with at inference: ``running`` (fixed), ``per-tile`` (computed from the tile),
        ``per-position`` (each voxel on its own), ``none`` or ``unknown``.
    tile_dependent : bool or None
        Whether its eval output at a voxel depends on tile content beyond the receptive field; None if unknown.
    note : str
        A short explanation.
    """

    name: str
    type: str
    statistics: Statistics
    tile_dependent: bool | None
    note: str


def registry_name(module: nn.Module) -> str | None:
    """Return the :mod:`~seamfree.layers.registry` name of a layer the registry builds, else None.

    Examples
    --------
    >>> registry_name(nn.InstanceNorm2d(4, track_running_stats=True))
    'instance_tracked'
    """
    if isinstance(module, BatchRenormNd):
        return "batchrenorm"
    if isinstance(module, _BatchNorm):
        return "batch" if module.track_running_stats and module.running_mean is not None else None
    if isinstance(module, _InstanceNorm):
        return "instance_tracked" if module.track_running_stats else "instance"
    if isinstance(module, SpatialLayerNorm):
        return "layer_spatial"
    if isinstance(module, nn.GroupNorm):
        return "group"
    if isinstance(module, ChannelLayerNorm):
        return "layer"
    return None


def classify_layer(module: nn.Module) -> tuple[Statistics, bool | None, str] | None:
    """Return ``(statistics, tile_dependent, note)`` for a layer the audit knows, None for other layers.

    Norms of the registry are described by the registry; the audit adds what it builds no layer for: BatchNorm
    without running statistics, torch's LayerNorm, local response normalization, attention and adaptive pooling
    (global context).

    Examples
    --------
    >>> classify_layer(nn.GroupNorm(2, 4))[:2]
    ('per-tile', True)
    >>> classify_layer(nn.Conv2d(1, 1, 3)) is None
    True
    """
    name = registry_name(module)
    if name is not None:
        spec = norm_spec(name)
        note = spec.note
        if isinstance(module, nn.GroupNorm) and name == "group":
            note = f"statistics of each tile over {module.num_groups} channel group(s)"
        return spec.statistics, spec.tile_dependent, note
    if isinstance(module, _BatchNorm):
        return "per-tile", True, "track_running_stats=False: batch statistics of the tile even in eval mode"
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) == 1:
            return "per-position", False, (
                "LayerNorm over the last axis only: tile-independent when that axis is channels "
                "(token LayerNorm); tile-dependent if applied to a spatial axis"
            )
        return "per-tile", True, f"LayerNorm over {tuple(module.normalized_shape)}: includes spatial axes"
    if isinstance(module, nn.LocalResponseNorm):
        return "per-position", False, "local response normalization over neighbouring channels"
    # "...Attention" (timm/MONAI self-attention), not attention *gates*, which are local.
    if isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention"):
        return "none", True, "attention mixes all positions of the tile: global context"
    if isinstance(module, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d
                  | nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d | nn.AdaptiveMaxPool3d):
        return "none", True, "adaptive pooling summarizes the whole tile (global context)"
    return None


def looks_like_norm(class_name: str) -> bool:
    """Whether an unrecognised layer's class name says it normalizes (so it is reported as unknown)."""
    name = class_name.lower()
    return "norm" in name or "standardiz" in name or "whiten" in name


def module_layers(
    model: nn.Module, describe: Callable[[nn.Module], tuple[str, tuple[Statistics, bool | None, str] | None]]
) -> list[LayerAudit]:
    """Return the audit of every submodule of ``model`` that ``describe`` classifies, or that looks like a norm.

    ``describe(module)`` gives the module's type name and its classification (None: not a known layer); an
    unclassified leaf whose type name says it normalizes is listed as ``unknown``.
    """
    layers: list[LayerAudit] = []
    for name, module in model.named_modules():
        kind, known = describe(module)
        if known is not None:
            layers.append(LayerAudit(name or "<root>", kind, *known))
        elif next(module.children(), None) is None and looks_like_norm(kind):
            layers.append(LayerAudit(
                name or "<root>", kind, "unknown", None,
                "unrecognised normalization-like layer: run the exactness check to know whether it is safe",
            ))
    return layers
