"""What a model's weights and attributes say about its input: spatial dimensions, input channels, network stride.

Read without running the model: seamfree models say it (``spatial_dims``, ``config``, ``network_stride``); other
``nn.Module`` and TorchScript models (scripted or traced) are read from their first convolution's weight, whose
shape is ``(out, in / groups, *kernel)``, and from the strides of their pooling and strided convolutions. What
cannot be read is probed by :func:`infer_geometry` (a few forward passes of small inputs).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from seamfree.errors import ConfigError, ShapeError
from seamfree.layers.modes import eval_mode

__all__ = ["first_convolution", "forward_once", "infer_geometry", "model_device", "model_dtype", "model_geometry",
           "odd_multiple", "round_up", "static_stride"]

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
    known = getattr(model, "spatial_dims", None) or (first[0] if first else None)
    if spatial_dims and known and int(known) != spatial_dims:
        raise ConfigError(f"spatial_dims={spatial_dims} (CLI --spatial-dims) contradicts the model, whose first "
                          f"convolution is {int(known)}D; pass {int(known)} or leave the option out")
    dims = spatial_dims or known
    channels = in_channels
    config = getattr(model, "config", None)
    if channels is None and isinstance(config, dict) and "in_channels" in config:
        channels = int(config["in_channels"])
    if channels is None and first is not None:
        channels = first[1]
    stride = static_stride(model, int(dims)) if dims else None
    return (int(dims) if dims else None), channels, stride


def model_device(model: nn.Module) -> torch.device:
    parameter = next(itertools.chain(model.parameters(), model.buffers()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    parameter = next(model.parameters(), None)
    return parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32


def forward_once(model: nn.Module, x: torch.Tensor) -> Any:
    with eval_mode(model), torch.inference_mode():
        return model(x.to(model_device(model), model_dtype(model)))


def _tryforward_once(model: nn.Module, shape: Sequence[int]) -> Any | None:
    """The model's output on a zero input of ``shape``, or None if it does not run on it."""
    try:
        return forward_once(model, torch.zeros(tuple(shape)))
    except Exception:  # a foreign forward can fail in any way on a shape it does not accept
        return None


def _same_size(out: Any, shape: Sequence[int]) -> bool:
    tensors = [out] if isinstance(out, torch.Tensor) else list(out.values()) if isinstance(out, dict) else \
        list(out) if isinstance(out, tuple | list) else []
    return any(isinstance(t, torch.Tensor) and tuple(t.shape[2:]) == tuple(shape[2:]) for t in tensors)


def _probe_geometry(model: nn.Module, dims: int | None, channels: int | None) -> tuple[int, int]:
    """Find spatial dimensions and input channels by running small inputs (for models that have no convolution)."""
    for d, c in itertools.product([dims] if dims else [2, 3], [channels] if channels else [1, 2, 3, 4]):
        if _tryforward_once(model, (1, c, *(64 if d == 2 else 32,) * d)) is not None:
            return d, c  # whether its output has the input's size is checked next
    raise ConfigError(
        f"cannot tell the spatial dimensions and input channels of {type(model).__name__}: it has no convolution "
        "to read them from and no 2D or 3D input of 1 to 4 channels ran; pass spatial_dims= and in_channels= "
        "(CLI --spatial-dims, --in-channels)"
    )


def _measure_stride(model: nn.Module, dims: int, channels: int) -> tuple[int, ...]:
    """The smallest size step per axis the model accepts with a same-size output (its network stride)."""
    base = 64 if dims <= 2 else 32
    stride = []
    for axis in range(dims):
        found = base
        for step in (2 ** k for k in range(int(math.log2(base)))):
            shape = [1, channels, *(base + (step if a == axis else 0) for a in range(dims))]
            if (out := _tryforward_once(model, shape)) is not None and _same_size(out, shape):
                found = step
                break
        stride.append(found)
    return tuple(stride)


def odd_multiple(stride: int, at_least: int = 16) -> int:
    """The smallest odd multiple ≥ 3 of ``stride`` that is ≥ ``at_least`` (a size a larger stride would refuse,
    with at least 3 voxels at the coarsest level, where InstanceNorm needs more than one)."""
    m = max(3, -(-at_least // stride))
    return stride * (m if m % 2 else m + 1)


def _check_channels(model: nn.Module, dims: int, channels: int, stride: tuple[int, ...], given: bool) -> Any:
    """Run one odd-multiple-of-the-stride input; return its output, or raise a one-line error naming the flag."""
    shape = (1, channels, *(odd_multiple(s) for s in stride))
    try:
        return forward_once(model, torch.zeros(shape))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        told = (f"in_channels={channels} (CLI --in-channels) was given" if given
                else f"{channels} input channel(s) were read from the model")
        raise ShapeError(f"the model does not run on a {dims}D input of {channels} channel(s) shaped {shape[2:]}: "
                         f"{first[:200]}; {told}: pass the right --in-channels/--spatial-dims") from exc


def infer_geometry(model: nn.Module, spatial_dims: int | None,
              in_channels: int | None) -> tuple[int, int, tuple[int, ...], Any, str]:
    dims, channels, stride = model_geometry(model, spatial_dims, in_channels)
    source = "given" if spatial_dims and in_channels else (
        "attributes" if getattr(model, "spatial_dims", None) else "first convolution")
    if dims is None or channels is None:
        dims, channels = _probe_geometry(model, dims, channels)
        source = "probing"
    if spatial_dims is not None and spatial_dims not in (1, 2, 3):
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if stride is None:
        stride = _measure_stride(model, dims, channels)
    else:
        shape = (1, channels, *(odd_multiple(s) for s in stride))
        out = _tryforward_once(model, shape)
        if out is None or not _same_size(out, shape):  # a stride the layers do not show (functional pooling)
            measured = _measure_stride(model, dims, channels)
            stride = tuple(max(a, b) for a, b in zip(stride, measured))
    out = _check_channels(model, dims, channels, stride, given=in_channels is not None)
    return dims, channels, stride, out, source
