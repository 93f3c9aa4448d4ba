"""How batches reach the device and which form of the model runs them: the GPU path of the engine.

- :class:`BatchTransfer`: on CUDA, each normalized batch is copied into pinned (page-locked) host memory and sent
  to the GPU with a non-blocking copy on a stream of its own, from the reading thread, so that the copy of the
  next batch overlaps the forward pass of this one; the forward waits for the copy's event only. On the CPU a
  batch is the numpy array's memory, no copy.
- :func:`to_memory_format`: ``channels_last`` (2D) or ``channels_last_3d`` (3D) input layout, which lets
  cuDNN pick its NHWC kernels (the convolutions follow the input's layout); the caller's model is not touched.
- :func:`compiled`: ``torch.compile`` of the model, made once per model object and kept while it lives.

All three keep the prediction exact under tiling: every tile, and the whole image, runs the same computation. They
change the last bits of the values against the eager contiguous forward, so they are part of the resume
fingerprint, like bfloat16 autocast.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from seamfree.errors import ConfigError

__all__ = ["BatchTransfer", "DeviceBatch", "compiled", "to_memory_format"]

_COMPILED = "_seamfree_compiled"  # where a model keeps its compiled form (not a submodule: no state_dict entry)


class DeviceBatch:
    """A batch on its way to the device: the tensor, and the event its copy records (CUDA only)."""

    __slots__ = ("event", "host", "tensor")

    def __init__(self, tensor: torch.Tensor, event: Any = None, host: torch.Tensor | None = None) -> None:
        self.tensor = tensor
        self.event = event
        self.host = host  # the pinned source, alive until the copy is done

    def ready(self) -> torch.Tensor:
        """Return the tensor once its copy is done, for use on the current stream."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.event)
            self.tensor.record_stream(stream)  # allocated on the copy stream, used on this one
            self.event = self.host = None
        return self.tensor


class BatchTransfer:
    """Send numpy batches to ``device``: pinned memory and a copy stream on CUDA, zero-copy on the CPU."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} needs CUDA, which this torch build or machine lacks; "
                              "use --device cpu")
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def send(self, batch: np.ndarray) -> DeviceBatch:
        """Start the copy of ``batch`` and return it as a :class:`DeviceBatch` (called from the reading thread)."""
        host = torch.from_numpy(np.ascontiguousarray(batch))
        if not self.cuda:
            return DeviceBatch(host.to(self.device))
        host = host.pin_memory()
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            tensor = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return DeviceBatch(tensor, event, host)


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Return ``x`` in channels-last layout (``channels_last`` for 4D, ``channels_last_3d`` for 5D) if asked."""
    if not channels_last or x.dim() not in (4, 5):
        return x
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def compiled(model: nn.Module) -> nn.Module:
    """Return ``torch.compile(model)``, made once per model object (the first forward of a shape compiles)."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return model
    if _COMPILED in model.__dict__:
        return model.__dict__[_COMPILED]
    try:
        with warnings.catch_warnings():  # torch's own imports while it sets up dynamo, not the user's concern
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.* is deprecated",
                                    category=DeprecationWarning)
            result = cast(nn.Module, torch.compile(model))
    except Exception as exc:  # torch.compile is unsupported on some Pythons and platforms
        raise ConfigError(f"torch.compile is not available here ({exc}); run without --compile") from exc
    model.__dict__[_COMPILED] = result  # a cycle the garbage collector frees with the model
    return result
