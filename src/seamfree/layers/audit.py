"""Per-layer audit: which layers make a model's eval-mode prediction depend on the tile it sees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from seamfree.layers.batchrenorm import BatchRenormNd
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm
from seamfree.layers.registry import Statistics, norm_spec

__all__ = ["LayerAudit", "NormAudit", "audit_norms", "classify_layer", "registry_name"]

Verdict = Literal["tile-independent", "tile-dependent", "unknown", "no-normalization"]


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


@dataclass(frozen=True)
class NormAudit:
    """The audit of a whole model: one :class:`LayerAudit` per normalization or global-context layer."""

    layers: tuple[LayerAudit, ...]
    verdict: Verdict
    summary: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def tile_dependent_layers(self) -> tuple[LayerAudit, ...]:
        """Return the layers whose eval output depends on the tile."""
        return tuple(layer for layer in self.layers if layer.tile_dependent)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serializable dict."""
        return {
            "verdict": self.verdict,
            "summary": self.summary,
            "counts": dict(self.counts),
            "layers": [asdict(layer) for layer in self.layers],
        }


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


def _looks_like_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    leaf = next(module.children(), None) is None
    return leaf and ("norm" in name or "standardiz" in name or "whiten" in name)


def audit_norms(model: nn.Module) -> NormAudit:
    """Return the normalization audit of ``model``: per-layer statistics, tile dependence and a verdict.

    Recognises torch's BatchNorm/SyncBatchNorm/InstanceNorm/GroupNorm/LayerNorm (with and without tracked
    statistics), seamfree's layers, attention and adaptive pooling (global context). Unknown leaf modules
    whose class name says "norm" are reported as ``unknown`` rather than ignored.

    Examples
    --------
    >>> from torch import nn
    >>> audit_norms(nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4))).verdict
    'tile-dependent'
    """
    layers: list[LayerAudit] = []
    for name, module in model.named_modules():
        known = classify_layer(module)
        if known is not None:
            statistics, dependent, note = known
            layers.append(LayerAudit(name or "<root>", type(module).__name__, statistics, dependent, note))
        elif _looks_like_norm(module):
            layers.append(LayerAudit(
                name or "<root>", type(module).__name__, "unknown", None,
                "unrecognised normalization-like layer: run the exactness check to know whether it is safe",
            ))
    return _verdict(tuple(layers))


def _verdict(layers: tuple[LayerAudit, ...]) -> NormAudit:
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    dependent = [layer for layer in layers if layer.tile_dependent]
    unknown = [layer for layer in layers if layer.tile_dependent is None]
    if dependent:
        kinds = sorted({layer.type for layer in dependent})
        summary = (
            f"{len(dependent)} layer(s) ({', '.join(kinds)}) use statistics or context of the whole tile: "
            "predictions depend on the tiling and no halo makes tiles agree"
        )
        return NormAudit(layers, "tile-dependent", summary, counts)
    if unknown:
        summary = (
            f"{len(unknown)} unrecognised normalization-like layer(s) ({unknown[0].type}); "
            "the exactness check decides whether tiling is safe"
        )
        return NormAudit(layers, "unknown", summary, counts)
    if not layers:
        return NormAudit(layers, "no-normalization", "no normalization layers: tiling can be exact", counts)
    summary = f"all {len(layers)} normalization layer(s) use fixed or per-voxel statistics: tiling can be exact"
    return NormAudit(layers, "tile-independent", summary, counts)
