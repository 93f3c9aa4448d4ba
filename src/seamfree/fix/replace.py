"""Which layers make a model tile-dependent, whether they can be replaced, and the replacement itself.

A per-tile normalization (InstanceNorm, GroupNorm, a layer norm over channels or over the tile) is replaced by a
BatchRenorm layer of the same width, which normalizes with running statistics at inference and so gives every
tile the same answer; its affine parameters start from the old layer's. What is learned from the tile itself in
another way — a global pooling that feeds a style vector (Cellpose), attention over the tile (ViTs), an
adaptive pooling — is not a normalization layer and cannot be swapped: :func:`fixability` says so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from seamfree.layers.audit import audit_norms
from seamfree.layers.factory import create_norm_layer
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm

__all__ = ["Fixability", "fixability", "replace_tile_dependent_norms"]

_INSTANCE = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_REPLACEABLE = (*_INSTANCE, nn.GroupNorm, ChannelLayerNorm, SpatialLayerNorm)


@dataclass(frozen=True)
class Fixability:
    """What the static audit says a fix can do.

    Attributes
    ----------
    method : {"convert", "distill", "none", "not-fixable"}
        "convert": BatchNorm layers, converted exactly to BatchRenorm and recalibrated; "distill": per-tile
        normalization layers, replaced and trained to match the original (self-distillation); "none": nothing
        makes the model tile-dependent; "not-fixable": tile dependence comes from layers that are not
        normalizations (global pooling, attention), or the audit cannot see the layers.
    replaceable, blocking : tuple of str
        Names of the layers a fix replaces, and of those it cannot.
    reason : str
        One sentence for the user.
    """

    method: str
    replaceable: tuple[str, ...]
    blocking: tuple[str, ...]
    reason: str


def fixability(model: nn.Module) -> Fixability:
    """Return what a fix of ``model`` would do, from its layers (no data needed)."""
    if isinstance(model, torch.jit.ScriptModule):
        return Fixability("not-fixable", (), (), "a TorchScript model's layers are compiled into its graph and "
                          "cannot be replaced; fix the Python model it was scripted from (or its checkpoint)")
    modules = dict(model.named_modules())
    audit = audit_norms(model)
    batch = tuple(layer.name for layer in audit.layers
                  if isinstance(modules.get(layer.name), nn.modules.batchnorm._BatchNorm)
                  and type(modules[layer.name]).__name__.startswith(("BatchNorm", "SyncBatchNorm")))
    dependent = [layer for layer in audit.layers if layer.tile_dependent is not False
                 and layer.statistics != "running"]
    replaceable = tuple(layer.name for layer in dependent if isinstance(modules.get(layer.name), _REPLACEABLE))
    blocking = tuple(layer.name for layer in dependent if layer.name not in replaceable)
    if blocking:
        what = ", ".join(f"{name} ({type(modules[name]).__name__ if name in modules else 'graph'})"
                         for name in blocking[:4])
        return Fixability("not-fixable", replaceable, blocking,
                          f"tile dependence comes from {what}: global context computed from the whole tile (a "
                          "style vector, attention, adaptive pooling), which no normalization swap removes; "
                          "predict with tiles as large as the image allows (or the whole image), or give the "
                          "model a fixed context computed once from the whole image")
    if replaceable:
        return Fixability("distill", replaceable, (), f"{len(replaceable)} per-tile normalization layer(s) are "
                          "replaced by BatchRenorm and trained to match the original on your images")
    if batch:
        return Fixability("convert", batch, (), f"{len(batch)} BatchNorm layer(s) are converted exactly to "
                          "BatchRenorm and their statistics recalibrated on your images")
    return Fixability("none", (), (), "no layer makes this model's predictions depend on the tile or the batch")


def replace_tile_dependent_norms(model: nn.Module, spatial_dims: int, names: tuple[str, ...], *,
                                 options: Mapping[str, object] | None = None,
                                 to: str = "batchrenorm") -> tuple[nn.Module, int]:
    """Return a copy of ``model`` with the per-tile normalizations ``names`` replaced by ``to`` layers
    (BatchRenorm, or BatchNorm with "batch"), and how many.

    The new layers keep the old affine parameters (scale 1, shift 0 where there were none) and start with zero
    mean, unit variance running statistics; a seamfree model's configuration says ``norm: batchrenorm`` after.
    """
    replaced = copy.deepcopy(model)
    count = 0
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = replaced.get_submodule(parent_name) if parent_name else replaced
        child = getattr(parent, child_name)
        if isinstance(child, _REPLACEABLE):
            setattr(parent, child_name, _renorm_like(child, spatial_dims, dict(options or {}), to))
            count += 1
    config = getattr(replaced, "config", None)
    if count and isinstance(config, dict) and "norm" in config:
        config["norm"] = to
        config["norm_options"] = dict(options or {})
    return replaced, count


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels)
    return int(getattr(layer, "num_features", 0) or getattr(layer, "normalized_shape", (0,))[0])


def _renorm_like(layer: nn.Module, spatial_dims: int, options: dict[str, object], to: str) -> nn.Module:
    new = create_norm_layer(to, _width(layer), spatial_dims, {"eps": getattr(layer, "eps", 1e-5), **options})
    with torch.no_grad():
        for name in ("weight", "bias"):
            old, target = getattr(layer, name, None), getattr(new, name, None)
            if isinstance(old, torch.Tensor) and isinstance(target, torch.Tensor) and old.numel() == target.numel():
                target.copy_(old.reshape(-1))
    reference = next(layer.parameters(), None)
    if reference is not None:
        new.to(device=reference.device)
    return new
