"""What a model's weights and attributes say about its input: spatial dimensions, input channels, network stride.

Read without running the model: seamfree models say it (``spatial_dims``, ``config``, ``network_stride``); other
``nn.Module`` and TorchScript models (scripted or traced) are read from their first convolution's weight, whose
shape is ``(out, in / groups, *kernel)``, and from the strides of their pooling and strided convolutions. What
cannot be read is probed by :mod:`seamfree.models.describe` (a few forward passes of small inputs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["first_convolution", "model_geometry", "round_up", "static_stride"]

_LAYER_WITH_STRIDE = re.compile(r"(Conv|MaxPool|AvgPool)[123]d")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ ``value``."""
    return -(-value // multiple) * multiple


def _class_name(module: nn.Module) -> str:
    """The eager class name, also of a TorchScript submodule (its ``original_name``)."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", ""))
    return type(module).__name__


def _is_convolution(module: nn.Module) -> bool:
    if isinstance(module, _CONV):
        return True
    name = _class_name(module)
    return isinstance(module, torch.jit.ScriptModule) and name in ("Conv1d", "Conv2d", "Conv3d")


def first_convolution(model: nn.Module) -> tuple[int, int] | None:
    """Return ``(spatial_dims, in_channels)`` from the model's first convolution weight, or None.

    Eager and TorchScript convolutions are recognised by class; a ``torch.export`` program (whose layers are
    gone) by its first parameter of rank 3–5 named ``*.weight`` that is not a transposed convolution's.
    """
    for module in model.modules():
        if _is_convolution(module):
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() in (3, 4, 5):
                groups = int(getattr(module, "groups", 1) or 1)
                return weight.dim() - 2, int(weight.shape[1]) * groups
    for name, weight in model.named_parameters():
        if name.endswith("weight") and weight.dim() in (3, 4, 5) and "transpose" not in name.lower():
            return weight.dim() - 2, int(weight.shape[1])
    return None


def _strided(model: nn.Module) -> Iterator[Any]:
    for module in model.modules():
        if isinstance(module, _TRANSPOSED) or _class_name(module).startswith("ConvTranspose"):
            continue
        stride = getattr(module, "stride", None)
        if stride is not None:
            yield stride


def _traced(model: nn.Module) -> bool:
    """Whether a TorchScript model was traced (saved and loaded, it is a ScriptModule whose layers lost their
    attributes) rather than scripted."""
    if not isinstance(model, torch.jit.ScriptModule):
        return False
    layers = [m for m in model.modules() if _LAYER_WITH_STRIDE.fullmatch(_class_name(m))]
    return any(getattr(m, "stride", None) is None for m in layers)


def static_stride(model: nn.Module, dims: int) -> tuple[int, ...] | None:
    """Network stride from the model's attribute or the product of its pooling/strided-conv strides.

    None for traced and exported models, whose layers keep no stride: :func:`~seamfree.models.describe_model`
    then measures it.
    """
    stride = getattr(model, "network_stride", None)
    if stride is not None:
        return tuple(int(s) for s in stride)
    if isinstance(model, torch.fx.GraphModule) or _traced(model):
        return None
    total = [1] * dims
    for value in _strided(model):
        per_axis = (value,) * dims if isinstance(value, int) else tuple(value)
        if len(per_axis) == dims:
            total = [t * int(s) for t, s in zip(total, per_axis)]
    return tuple(total)


def model_geometry(model: nn.Module, spatial_dims: int | None = None,
                   in_channels: int | None = None) -> tuple[int | None, int | None, tuple[int, ...] | None]:
    """Return ``(spatial_dims, in_channels, network_stride)`` as far as the model tells them (None: unknown).

    Explicit arguments win; then the model's own attributes (seamfree models), then its first convolution.
    """
    first = first_convolution(model)
    dims = spatial_dims or getattr(model, "spatial_dims", None) or (first[0] if first else None)
    channels = in_channels
    config = getattr(model, "config", None)
    if channels is None and isinstance(config, dict) and "in_channels" in config:
        channels = int(config["in_channels"])
    if channels is None and first is not None:
        channels = first[1]
    stride = static_stride(model, int(dims)) if dims else None
    return (int(dims) if dims else None), channels, stride
