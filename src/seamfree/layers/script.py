"""The audit of TorchScript models (scripted or traced), whose layers ``isinstance`` never recognizes.

Two sources of evidence, both from the compiled model itself:

- its submodules keep the name of the class they were compiled from (``original_name``) and their attributes
  (``track_running_stats``, ``num_groups``, ``normalized_shape``): each is classified as the eager layer it was
  compiled from would be;
- its inlined graph holds every operation, including those called as functions: ``aten::instance_norm``
  (with its ``use_input_stats`` flag), ``aten::group_norm``, ``aten::layer_norm``, ``aten::batch_norm`` (with
  its ``training`` flag), adaptive pooling, and means or maxima over spatial axes (global context). Operations
  the submodules do not account for are reported as layers of their own.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from seamfree.layers.batchrenorm import BatchRenorm2d
from seamfree.layers.classify import LayerAudit, classify_layer, module_layers
from seamfree.layers.layernorm import ChannelLayerNorm, SpatialLayerNorm
from seamfree.layers.modes import eval_mode
from seamfree.layers.registry import Statistics

__all__ = ["audit_script_layers", "graph_layers", "graph_operations", "trace_for_audit"]

def _stand_in(module: Any) -> nn.Module | None:
    """Return the eager layer a compiled submodule was compiled from, with its classification-relevant
    attributes (tracked statistics, groups, normalized shape), or None for other submodules."""
    name = str(getattr(module, "original_name", ""))
    dims = int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else 2
    if name.startswith("BatchNorm") or name == "SyncBatchNorm":
        tracked = bool(getattr(module, "track_running_stats", True))
        tracked = tracked and getattr(module, "running_mean", None) is not None
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](1, track_running_stats=tracked)
    if name.startswith("InstanceNorm"):
        tracked = bool(getattr(module, "track_running_stats", False))
        return (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1](1, track_running_stats=tracked)
    if name == "GroupNorm":
        groups = int(getattr(module, "num_groups", 1))
        return nn.GroupNorm(groups, groups)
    if name == "LayerNorm":
        return nn.LayerNorm(tuple(getattr(module, "normalized_shape", (1, 1))))
    if name == "LocalResponseNorm":
        return nn.LocalResponseNorm(int(getattr(module, "size", 2)))
    if name.startswith(("AdaptiveAvgPool", "AdaptiveMaxPool")):
        return nn.AdaptiveAvgPool2d(1)
    if name.endswith("Attention"):  # torch's MultiheadAttention, timm/MONAI self-attention blocks
        return nn.MultiheadAttention(2, 1)
    if name.startswith("BatchRenorm"):
        return BatchRenorm2d(1)
    if name == "ChannelLayerNorm":
        return ChannelLayerNorm(1)
    if name == "SpatialLayerNorm":
        return SpatialLayerNorm(1)
    return None


# graph operation -> the layer kinds of the submodules that account for it
_OPERATION_OWNERS = {
    "aten::batch_norm": ("BatchNorm", "SyncBatchNorm", "BatchRenorm"),
    "aten::instance_norm": ("InstanceNorm",),
    "aten::group_norm": ("GroupNorm", "SpatialLayerNorm"),
    "aten::layer_norm": ("LayerNorm",),
}


def _constant(value: torch.Value) -> Any:
    """Return the value of a graph constant (or of a list of constants), None when it is computed."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        items = [_constant(item) for item in node.inputs()]
        return None if any(item is None for item in items) else items
    return None


def _classify_operation(node: torch.Node) -> tuple[Statistics, bool | None, str] | None:
    kind = node.kind()
    inputs = list(node.inputs())
    if kind == "aten::instance_norm":
        statistics = _constant(inputs[5])  # use_input_stats
        if statistics is False:
            return "running", False, "instance norm with running statistics"
        return "per-tile", True, "instance norm: statistics of each tile and channel"
    if kind == "aten::group_norm":
        return "per-tile", True, "group norm: statistics of each tile over channel groups"
    if kind == "aten::layer_norm":
        shape = _constant(inputs[1])
        if isinstance(shape, list) and len(shape) == 1:
            return "per-position", False, "layer norm over the last axis only"
        return "per-tile", True, "layer norm over several axes, spatial ones included"
    if kind == "aten::batch_norm":
        if _constant(inputs[5]) is True:  # training=True even in eval mode: batch statistics of the tile
            return "per-tile", True, "batch norm with batch statistics at inference (no running statistics)"
        return "running", False, "batch norm with running statistics at inference"
    if kind.startswith(("aten::adaptive_avg_pool", "aten::adaptive_max_pool")):
        return "none", True, "adaptive pooling summarizes the whole tile (global context)"
    if kind in ("aten::mean", "aten::amax", "aten::amin", "aten::sum", "aten::max", "aten::std", "aten::var"):
        dims = _constant(inputs[1]) if len(inputs) > 1 else None
        if isinstance(dims, list) and any(d >= 2 or d < 0 for d in dims):
            return "none", True, f"{kind[6:]} over spatial axes {dims}: global context"
    return None


def graph_operations(
    model: torch.jit.ScriptModule,
) -> Iterator[tuple[torch.Node, tuple[Statistics, bool | None, str]]]:
    """Yield every tile-relevant operation of ``model``'s inlined graph with its classification."""
    for node in model.inlined_graph.nodes():
        classified = _classify_operation(node)
        if classified is not None:
            yield node, classified


def audit_script_layers(model: torch.jit.ScriptModule) -> list[LayerAudit]:
    """Return the audit of every normalization or global-context layer of a TorchScript model."""
    def describe(module: nn.Module) -> tuple[str, tuple[Statistics, bool | None, str] | None]:
        stand_in = _stand_in(module)
        return (str(getattr(module, "original_name", type(module).__name__)),
                classify_layer(stand_in) if stand_in is not None else None)

    layers = module_layers(model, describe)
    return layers + graph_layers(model, layers)


def graph_layers(compiled: torch.jit.ScriptModule, listed: list[LayerAudit]) -> list[LayerAudit]:
    """Return the graph operations of ``compiled`` that no layer of ``listed`` accounts for, as layers."""
    kinds = Counter(layer.type for layer in listed)
    accounted = Counter({operation: sum(n for kind, n in kinds.items() if kind.startswith(owners))
                         for operation, owners in _OPERATION_OWNERS.items()})
    found: Counter[str] = Counter()
    extra = []
    for node, (statistics, dependent, note) in graph_operations(compiled):
        operation = node.kind()
        if accounted[operation] > 0:
            accounted[operation] -= 1  # this operation is a listed submodule
            continue
        found[operation] += 1
        extra.append(LayerAudit(f"<graph> {operation} #{found[operation]}", operation, statistics, dependent,
                                f"{note} (an operation of the compiled graph, not a submodule)"))
    return extra


def trace_for_audit(model: nn.Module, example: torch.Tensor | None = None) -> torch.jit.ScriptModule | None:
    """Return ``model`` traced in eval mode on ``example`` (default: a small zero input shaped for its first
    convolution), or None if no input can be inferred or tracing fails: its functional operations stay unseen."""
    if example is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)), None)
        if first is None:
            return None
        dims = len(first.kernel_size)
        example = torch.zeros((1, first.in_channels, *(64 if dims < 3 else 32,) * dims), device=first.weight.device)
    try:
        with warnings.catch_warnings(), torch.no_grad(), eval_mode(model):
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent control flow
            return torch.jit.trace(model, example, check_trace=False, strict=False)
    except Exception:  # any model code can fail on a probe; the audit then says what it could not see
        return None
