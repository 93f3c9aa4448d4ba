"""Tiling suggestions: the core and tiles per batch that fit a memory budget with the least recomputed halo.

The halo comes from the model's measured receptive field (:class:`~seamfree.models.ModelInfo`); the memory of
one tile from the bytes of all intermediate outputs per input voxel, measured with one small forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seamfree.errors import ShapeError
from seamfree.layers.modes import eval_mode
from seamfree.models.describe import ModelInfo, describe_model
from seamfree.models.receptive import ReceptiveField
from seamfree.tiling.grid import round_up

__all__ = ["TilingSuggestion", "activation_bytes_per_voxel", "default_memory_budget", "suggest_tiling",
           "total_memory"]


@dataclass(frozen=True)
class TilingSuggestion:
    """Core, halo and tiles per batch for a model, an image and a memory budget."""

    core: tuple[int, ...]
    halo: tuple[int, ...]
    tiles_per_batch: int
    tile_shape: tuple[int, ...]
    estimated_bytes: int
    compute_ratio: float

    def to_dict(self) -> dict[str, object]:
        return {"core": list(self.core), "halo": list(self.halo), "tiles_per_batch": self.tiles_per_batch,
                "tile_shape": list(self.tile_shape), "estimated_bytes": self.estimated_bytes,
                "compute_ratio": self.compute_ratio}


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


def suggest_tiling(
    model: nn.Module,
    image_shape: tuple[int, ...],
    *,
    memory_budget: int | None = None,
    device: str = "cpu",
    receptive_field: ReceptiveField | None = None,
    info: ModelInfo | None = None,
) -> TilingSuggestion:
    """Return the core, halo and tiles per batch that use ``memory_budget`` bytes with the least overhead.

    The halo is the measured receptive-field radius (rounded to the network stride). The number of cores per
    axis is the smallest for which a tile fits the budget, so cores are as large as memory allows and the
    recomputed halo, ``(core + 2·halo)^d / core^d``, as small as it can be. Default budget: an eighth of the
    machine's total RAM, at most 4 GiB, on CPU, the same at every call (:func:`default_memory_budget`; batch 1:
    large tiles are not slower per voxel there); half of the free GPU memory on CUDA (batch up to 4). ``info``:
    the model's description (made if not given); ``receptive_field`` replaces its receptive field.
    """
    info = info or describe_model(model, probe=False)
    rf = receptive_field or info.receptive_field
    dims, stride = info.spatial_dims, info.network_stride
    if len(image_shape) != dims:
        raise ShapeError(f"image_shape {image_shape} has {len(image_shape)} axes, the model is {dims}D")
    budget = memory_budget or default_memory_budget(device)
    bytes_per_voxel = activation_bytes_per_voxel(model, info.in_channels, stride)
    padded = [round_up(n, s) for n, s in zip(image_shape, stride)]
    counts = [1] * dims

    def tile_of(counts: list[int]) -> tuple[list[int], list[int]]:
        core = [round_up(-(-p // k), s) for p, k, s in zip(padded, counts, stride)]
        tile = [min(c + 2 * h, p) for c, h, p in zip(core, rf.halo, padded)]
        return core, tile

    core, tile = tile_of(counts)
    while math.prod(tile) * bytes_per_voxel > budget:
        axis = int(np.argmax([c if c > s else 0 for c, s in zip(core, stride)]))
        if core[axis] <= stride[axis]:
            break
        counts[axis] += 1
        core, tile = tile_of(counts)
    tile_bytes = math.prod(tile) * bytes_per_voxel
    batch = 1 if device == "cpu" else int(max(1, min(4, budget // max(tile_bytes, 1))))
    ratio = math.prod(k * t for k, t in zip(counts, tile)) / math.prod(image_shape)
    return TilingSuggestion(tuple(core), rf.halo, batch, tuple(tile), int(tile_bytes * batch), ratio)


def default_memory_budget(device: str) -> int:
    """Return the default bytes for activations: half the free GPU memory, or min(RAM/8, 4 GiB) on CPU.

    On the CPU the budget comes from the machine's *total* memory (its cgroup limit where lower), never from the
    free memory of the moment, which the page cache and other programs change from call to call: the same command
    on the same machine always chooses the same plan, so a default-settings run resumes whatever the memory
    situation now.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.5)
    return int(min(4 << 30, total_memory() // 8))


def total_memory() -> int:
    """Bytes of physical memory this process may use: the machine's RAM, or its cgroup's limit when lower."""
    import os

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as handle:
                limit = handle.read().strip()
        except OSError:
            continue
        if limit.isdigit() and 0 < int(limit) < total:
            total = int(limit)
        break
    return int(total)
