"""What determines a model's answer, as digests: the key under which its measurements are cached.

Two models with equal weights may compute different things: another dilation, padding, stride, activation or
``forward``. :func:`structure_digest` hashes the module tree (every module's path, class, the arguments its
``extra_repr`` shows, its plain attributes and the byte code of its ``forward``; for TorchScript the inlined
graph) and the parameters' shapes; :func:`static_reach` is the reach of the widest single convolution or pooling
window, a floor under any measured receptive field: a cached halo below it is not believed.
"""

from __future__ import annotations

import hashlib
import types
from typing import Any

import torch
from torch import nn

__all__ = ["static_reach", "structure_digest"]

_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, tuple | list) and len(value) <= 64 and all(isinstance(v, _PLAIN) for v in value)


def _code(function: Any) -> bytes:
    """The byte code and constants of a Python function (nested code objects included)."""
    code = getattr(function, "__code__", None)
    if not isinstance(code, types.CodeType):
        return b""
    parts = [code.co_code, repr([c for c in code.co_consts if not isinstance(c, types.CodeType)]).encode(),
             repr(code.co_names).encode()]
    parts += [_code(types.FunctionType(c, {})) for c in code.co_consts if isinstance(c, types.CodeType)]
    return b"".join(parts)


def structure_digest(model: nn.Module) -> str:
    """sha256 of the model's structure: what, besides the weights' bytes, decides its output."""
    digest = hashlib.sha256()
    if isinstance(model, torch.jit.ScriptModule):
        try:
            digest.update(str(model.inlined_graph).encode())
        except (RuntimeError, AttributeError):  # a module without a forward graph
            digest.update(str(getattr(model, "code", "")).encode())
    for name, module in model.named_modules():
        kind = type(module)
        digest.update(f"{name}|{kind.__module__}.{kind.__qualname__}|".encode())
        try:
            digest.update(module.extra_repr().encode())
        except Exception:
            digest.update(b"?")
        plain = sorted((k, repr(v)) for k, v in vars(module).items()
                       if not k.startswith("_") and k != "training" and _plain(v))
        digest.update(repr(plain).encode())
        if not isinstance(module, torch.jit.ScriptModule):
            digest.update(_code(kind.forward))
    for key, value in sorted(model.state_dict().items()):
        if isinstance(value, torch.Tensor):
            digest.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
    return digest.hexdigest()


def _per_axis(value: Any, dims: int) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value,) * dims
    if isinstance(value, tuple | list) and len(value) == dims and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def static_reach(model: nn.Module, dims: int) -> tuple[int, ...]:
    """Per axis, the widest reach ``dilation * (kernel - 1) // 2`` of any single convolution or pooling window
    with a readable kernel (0 where none): a floor under the receptive-field radius of a model that uses them."""
    reach = [0] * dims
    for module in model.modules():
        kernel = _per_axis(getattr(module, "kernel_size", None), dims)
        if kernel is None:
            continue
        dilation = _per_axis(getattr(module, "dilation", 1), dims) or (1,) * dims
        reach = [max(r, d * (k - 1) // 2) for r, d, k in zip(reach, dilation, kernel)]
    return tuple(reach)
