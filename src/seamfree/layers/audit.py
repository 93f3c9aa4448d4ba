"""Per-layer audit: which layers make a model's eval-mode prediction depend on the tile it sees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from seamfree.layers.classify import LayerAudit, classify_layer, module_layers, registry_name
from seamfree.layers.script import audit_script_layers, graph_layers, trace_for_audit

__all__ = ["LayerAudit", "NormAudit", "audit_norms", "classify_layer", "registry_name"]

Verdict = Literal["tile-independent", "tile-dependent", "unknown", "no-normalization"]


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


def audit_norms(model: nn.Module, example: torch.Tensor | None = None) -> NormAudit:
    """Return the normalization audit of ``model``: per-layer statistics, tile dependence and a verdict.

    Recognises torch's BatchNorm/SyncBatchNorm/InstanceNorm/GroupNorm/LayerNorm (with and without tracked
    statistics), seamfree's layers, attention and adaptive pooling (global context). Unknown leaf modules
    whose class name says "norm" are reported as ``unknown`` rather than ignored. TorchScript models (scripted
    or traced) are audited from their compiled submodules and graph (:mod:`seamfree.layers.script`); other
    modules are traced on ``example`` (default: a small input shaped for their first convolution) so that the
    operations their forward calls as functions are seen too.

    Examples
    --------
    >>> from torch import nn
    >>> audit_norms(nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4))).verdict
    'tile-dependent'
    """
    if isinstance(model, torch.jit.ScriptModule):
        return _verdict(tuple(audit_script_layers(model)))
    layers = module_layers(model, lambda module: (type(module).__name__, classify_layer(module)))
    traced = trace_for_audit(model, example)
    if traced is None:
        return _verdict(tuple(layers), graph_seen=False)
    return _verdict(tuple(layers + graph_layers(traced, layers)))


def _verdict(layers: tuple[LayerAudit, ...], *, graph_seen: bool = True) -> NormAudit:
    """Return the verdict on ``layers``; without the graph (``graph_seen`` False), "no layers" proves nothing."""
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
    if not layers and not graph_seen:
        return NormAudit(layers, "unknown", "no normalization layer among the modules, but the forward pass could "
                         "not be traced to check its functional operations; the exactness check decides", counts)
    if not layers:
        return NormAudit(layers, "no-normalization", "no normalization layers: tiling can be exact", counts)
    summary = f"all {len(layers)} normalization layer(s) use fixed or per-voxel statistics: tiling can be exact"
    return NormAudit(layers, "tile-independent", summary, counts)
