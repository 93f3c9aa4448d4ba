"""Tiling suggestions: the core and tiles per batch that fit a memory budget with the least recomputed halo.

The halo comes from the model's measured receptive field (:class:`~seamfree.models.ModelInfo`); the memory of
one tile from the measured peak of a forward (:mod:`seamfree.tiling.memory`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from seamfree.errors import ShapeError
from seamfree.models.describe import ModelInfo, describe_model
from seamfree.models.receptive import ReceptiveField
from seamfree.tiling.grid import MAX_TILE_TO_CORE_RATIO, round_up
from seamfree.tiling.memory import activation_bytes_per_voxel, forward_memory

logger = logging.getLogger(__name__)

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


def suggest_tiling(
    model: nn.Module,
    image_shape: tuple[int, ...],
    *,
    memory_budget: int | None = None,
    device: str = "cpu",
    receptive_field: ReceptiveField | None = None,
    info: ModelInfo | None = None,
) -> TilingSuggestion:
    """Return the core, halo and tiles per batch that fit ``memory_budget`` bytes and compute the fewest voxels.

    The halo is the measured receptive-field radius (rounded to the network stride). A tile's memory is the
    *measured* peak of a forward (:func:`~seamfree.tiling.memory.forward_memory`, per voxel, cached per model).
    Among all the numbers of cores per axis whose tiles fit, the one with the fewest voxels computed in total
    (cores plus their recomputed halos; an axis in one core has no halo) wins, then the one with fewer tiles: an
    axis that one tile already spans is never split, and cores stay as large and as cubic as memory allows.
    Default budget: an eighth of the machine's total RAM, at most 4 GiB, on CPU, the same at every call
    (:func:`default_memory_budget`; batch 1: large tiles are not slower per voxel there); half of the free GPU
    memory on CUDA (batch up to 4). ``info``: the model's description (made if not given);
    ``receptive_field`` replaces its receptive field.
    """
    info = info or describe_model(model, probe=False)
    rf = receptive_field or info.receptive_field
    dims, stride = info.spatial_dims, info.network_stride
    if len(image_shape) != dims:
        raise ShapeError(f"image_shape {image_shape} has {len(image_shape)} axes, the model is {dims}D")
    budget = memory_budget or default_memory_budget(device)
    memory = forward_memory(model, info.in_channels, stride, device=None if device == "cpu" else device,
                            digest=info.digest)
    padded = [round_up(n, s) for n, s in zip(image_shape, stride)]
    counts, core, tile = _fewest_voxels(padded, stride, rf.halo, lambda voxels: memory.bytes(voxels) <= budget)
    tile_bytes = memory.bytes(math.prod(tile))
    batch = 1 if device == "cpu" else int(max(1, min(4, budget // max(tile_bytes, 1))))
    ratio = math.prod(k * t for k, t in zip(counts, tile)) / math.prod(image_shape)
    if tile_bytes > budget:
        logger.warning("even the smallest tiles %s need an estimated %.0f MB per forward pass, more than the "
                       "memory budget of %.0f MB: using them (%.1f× the image's voxels computed); give a larger "
                       "budget (CLI --memory-budget) or a core (--core)", tuple(tile), tile_bytes / 1e6,
                       budget / 1e6, ratio)
    logger.info("tiling: core %s, tile %s, %d tiles, %d per batch, %.2f× the image's voxels computed, an estimated "
                "%.0f MB per batch of a %.0f MB budget", tuple(core), tuple(tile), math.prod(counts), batch, ratio,
                tile_bytes * batch / 1e6, budget / 1e6)
    return TilingSuggestion(tuple(core), rf.halo, batch, tuple(tile), int(tile_bytes * batch), ratio)


def _fewest_voxels(padded: list[int], stride: tuple[int, ...], halo: tuple[int, ...],
                   fits: Callable[[int], bool]) -> tuple[list[int], list[int], list[int]]:
    """The cores per axis, core and tile whose tiles ``fit`` with the fewest voxels computed, then fewest tiles.

    Every distinct core per axis is a candidate (a multiple of the stride; cores smaller than the halo only when
    nothing else fits); for each choice on the other axes the last axis takes the fewest cores that fit (more
    only add halo; cores the grid refuses, with tiles over MAX_TILE_TO_CORE_RATIO× the core, are none). When nothing
    fits: the smallest tiles (``suggest_tiling`` says so; the engine reports a memory error if it happens)."""
    def options(p: int, s: int, h: int) -> list[tuple[int, int, int]]:  # (cores, core, tile), largest core first
        found: dict[int, int] = {}
        for k in range(1, p // s + 1):
            found.setdefault(round_up(-(-p // k), s), k)
        every = [(k, c, min(c + 2 * h, p)) for c, k in found.items()]
        # the grid refuses a tile that computes more than MAX_TILE_TO_CORE_RATIO× its core along an axis
        return [o for o in every if o[2] >= p or o[2] <= MAX_TILE_TO_CORE_RATIO * o[1]] or every[:1]

    every = [options(p, s, h) for p, s, h in zip(padded, stride, halo)]
    wide = [[o for o in axis if o[1] >= max(h, s)] or axis for axis, h, s in zip(every, halo, stride)]
    for per_axis in (wide, every):
        best: tuple[int, int, list[tuple[int, int, int]]] | None = None
        for head in itertools.product(*per_axis[:-1]):
            head_voxels = math.prod(t for _, _, t in head)
            last = next((o for o in per_axis[-1] if fits(head_voxels * o[2])), None)  # the fewest cores that fit
            if last is None:
                continue
            choice = [*head, last]
            computed = math.prod(k * t for k, _, t in choice)
            tiles = math.prod(k for k, _, _ in choice)
            if best is None or (computed, tiles) < best[:2]:
                best = (computed, tiles, choice)
        if best is not None:
            chosen = best[2]
            break
    else:
        chosen = [axis[-1] for axis in every]
    return [k for k, _, _ in chosen], [c for _, c, _ in chosen], [t for _, _, t in chosen]


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
