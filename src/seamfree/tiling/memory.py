"""The memory one forward pass really needs: measured at two probe sizes, fitted per voxel, cached per model.

Under ``inference_mode`` most intermediate outputs are freed as the forward goes, so the sum of every layer's
output (:func:`~seamfree.tiling.suggest.activation_bytes_per_voxel`, kept as the fallback) overstates the peak
2–4× for a U-Net and buys tiles that are far smaller than memory allows. Here the peak of live tensor bytes is
measured:

- on the CPU, from torch's own allocation records (the profiler's memory events, in time order: the running sum
  of allocations and frees, its maximum), which no allocator cache or page cache distorts;
- on CUDA, with ``torch.cuda.max_memory_allocated`` around the forward.

Two probes (2D: 256² and 512²; 3D: 64³ and 96³, rounded to the network stride, batch 1): the larger gives the
bytes per voxel, the smaller what it needed beyond that rate (fixed scratch buffers); a tile of ``V`` voxels is
estimated at ``fixed + per_voxel · V`` per sample, times :data:`ALLOCATOR_OVERHEAD` for what the process needs
beyond its live tensors. Per-voxel memory falls with size towards a constant (a
U-Net: 472 B/voxel in 2D from 256² on, 242 B/voxel in 3D from 96³ on, where the sum of all layer outputs says
1622 and 562), so the estimate is exact at both probes and an upper bound for larger tiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from seamfree.layers.modes import eval_mode
from seamfree.models.field_cache import load_record, store_record
from seamfree.tiling.grid import round_up

__all__ = ["ALLOCATOR_OVERHEAD", "ENGINE_IN_BYTES", "ENGINE_OUT_BYTES", "ForwardMemory", "activation_bytes_per_voxel",
           "architecture_identity", "engine_bytes",
           "forward_memory", "model_device", "peak_forward_bytes"]

logger = logging.getLogger(__name__)

_PROBES = {1: (4096, 8192), 2: (256, 512), 3: (64, 96)}
# what the process needs beyond its live tensor bytes (the allocator's free lists, fragmentation): the kernel's peak
# resident memory of a warm forward was up to 1.16x the live peak in the tests (2D U-Net, glibc malloc)
ALLOCATOR_OVERHEAD = 1.25
_CACHE: dict[tuple[str, int, str], ForwardMemory] = {}


# Host bytes the engine holds per tile voxel around the forward, per input channel: the read-ahead batches of
# normalized float32 input (PREFETCH_BATCHES queued and one being built), the raw window and its reflect-padded
# copy (at most float32 each), the finiteness mask; per output channel: the forward's float32 result and its
# activation, the converter's float32 temporaries (three), the stored values and a digest's copy of them.
ENGINE_IN_BYTES = 4 * 3 + 2 * 4 + 1
ENGINE_OUT_BYTES = 4 + 4 + 3 * 4 + 1 + 4


def engine_bytes(voxels: int, in_channels: int, out_channels: int, batch: int = 1) -> int:
    """Bytes the engine holds around the forward for ``batch`` tiles of ``voxels`` voxels (see the constants)."""
    return int(batch * voxels * (ENGINE_IN_BYTES * in_channels + ENGINE_OUT_BYTES * out_channels))


@dataclass(frozen=True)
class ForwardMemory:
    """Peak memory of one forward pass (batch 1) as a function of the tile's voxels: ``fixed + per_voxel · V``.

    Attributes
    ----------
    fixed_bytes : int
        What the smaller probe needed beyond its voxels at the larger probe's rate (scratch buffers); 0 if none.
    bytes_per_voxel : float
        Peak per input voxel of the larger probe.
    measured : bool
        False when the peak could not be measured and the sum of all layer outputs stands in (an upper bound).
    """

    fixed_bytes: int
    bytes_per_voxel: float
    measured: bool = True

    def bytes(self, voxels: int, batch: int = 1) -> int:
        """Estimated peak bytes of a forward on ``batch`` tiles of ``voxels`` voxels, allocator overhead included
        (:data:`ALLOCATOR_OVERHEAD` over the live tensors; none for the unmeasured upper bound)."""
        overhead = ALLOCATOR_OVERHEAD if self.measured else 1.0
        return int(overhead * batch * (self.fixed_bytes + self.bytes_per_voxel * voxels))

    def to_dict(self) -> dict[str, object]:
        return {"fixed_bytes": self.fixed_bytes, "bytes_per_voxel": self.bytes_per_voxel, "measured": self.measured}


def forward_memory(model: nn.Module, in_channels: int, stride: tuple[int, ...], *, device: str | None = None,
                   digest: str | None = None) -> ForwardMemory:
    """Return the measured memory model of ``model``, cached in this process and on disk beside the receptive
    field (:mod:`seamfree.models.field_cache`): starting torch's profiler alone takes seconds.

    Memory depends on the architecture, not on the weights' values: the key is the model's structure (its
    ``repr``, a compiled model's code) with ``digest`` (the parameters' hash) only where the structure says
    nothing (an opaque module), so that models of one architecture trained differently share one measurement.
    """
    where = device or model_device(model)
    identity = architecture_identity(model, digest)
    key = (identity, in_channels, where) if identity else None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    stored = _stored(key)
    if stored is not None and key is not None:
        _CACHE[key] = stored
        return stored
    dims = len(stride)
    small, large = (tuple(round_up(n, s) for s in stride) for n in _PROBES.get(dims, (64, 96)))
    try:
        low = peak_forward_bytes(model, (1, in_channels, *small), where)
        per_voxel = peak_forward_bytes(model, (1, in_channels, *large), where) / math.prod(large)
        result = ForwardMemory(int(max(0.0, low - per_voxel * math.prod(small))), per_voxel)
    except Exception as exc:  # any failure: the conservative estimate
        logger.debug("peak memory of %s not measured (%s: %s); using the sum of its layer outputs",
                     type(model).__name__, type(exc).__name__, exc)
        result = ForwardMemory(0, activation_bytes_per_voxel(model, in_channels, stride), measured=False)
    logger.debug("forward memory of %s: %s", type(model).__name__, result)
    if key is not None:
        _CACHE[key] = result
        if result.measured:  # between processes too: the profiler alone takes seconds to start
            store_record(_disk_key(key), {"fixed_bytes": result.fixed_bytes,
                                          "bytes_per_voxel": result.bytes_per_voxel})
    return result


def architecture_identity(model: nn.Module, digest: str | None = None) -> str | None:
    """What memory and speed of a forward depend on: the architecture (its ``repr``, a compiled model's code),
    not the weights' values; ``digest`` (the parameters' hash) only for an opaque module that shows no layers
    (None: no identity, nothing may be cached)."""
    layers = repr(model)
    if "(" not in layers:  # a module that shows no layers: the weights are its only identity
        return digest
    structure = f"{type(model).__qualname__}:{layers}:{getattr(model, 'code', '')}"
    return hashlib.sha256(structure.encode()).hexdigest()


def model_device(model: nn.Module) -> str:
    """The device of the model's first parameter ("cpu" for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return str(parameter.device) if parameter is not None else "cpu"


def _disk_key(key: tuple[object, ...]) -> tuple[object, ...]:
    return ("forward memory", torch.__version__, *key)


def _stored(key: tuple[str | None, int, str] | None) -> ForwardMemory | None:
    """The memory model an earlier process measured for ``key`` (None: none, or not valid numbers)."""
    record = load_record(_disk_key(key)) if key is not None else None
    if record is None:
        return None
    fixed, per_voxel = record.get("fixed_bytes"), record.get("bytes_per_voxel")
    if isinstance(fixed, int) and fixed >= 0 and isinstance(per_voxel, int | float) and per_voxel > 0:
        return ForwardMemory(fixed, float(per_voxel))
    return None


@torch.inference_mode()
def activation_bytes_per_voxel(model: nn.Module, in_channels: int, stride: tuple[int, ...]) -> float:
    """Return the bytes of all intermediate outputs per input voxel (an upper bound of inference memory).

    Measured with forward hooks on one small input; compiled models (TorchScript), whose layers take no hooks,
    are bounded by 4 bytes × the output channels of all their convolutions, as if all ran at full resolution.
    """
    probe = tuple(max(2 * s, 16) for s in stride)
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    try:
        handles = [m.register_forward_hook(hook) for m in leaves]
    except (RuntimeError, AttributeError):  # TorchScript modules refuse hooks added after compilation
        return _compiled_bytes_per_voxel(model)
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with eval_mode(model):
            model(torch.zeros((1, in_channels, *probe), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total / math.prod(probe) if total else _compiled_bytes_per_voxel(model)


def _compiled_bytes_per_voxel(model: nn.Module) -> float:
    channels = sum(int(w.shape[0]) for name, w in model.named_parameters()
                   if name.endswith("weight") and w.dim() >= 3)
    return 4.0 * max(channels, 1)


@torch.inference_mode()
def peak_forward_bytes(model: nn.Module, shape: tuple[int, ...], device: str = "cpu") -> int:
    """The peak of live tensor bytes during one forward of ``model`` on zeros of ``shape`` (inputs excluded)."""
    x = torch.zeros(shape, device=device)
    with eval_mode(model):
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            model(x)
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - before)
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
            model(x)
    events = sorted((e.start_ns(), e.nbytes()) for e in recorded.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    if peak <= 0:
        raise RuntimeError("the profiler recorded no allocation")
    return int(peak)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints a start and a stop line to the process's stderr: not for the user."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (a notebook, a closed descriptor)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
