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
from seamfree.tiling.memory import activation_bytes_per_voxel, architecture_identity, engine_bytes, forward_memory
from seamfree.tiling.throughput import MIN_GAIN, MIN_TIMED_VOXELS, SLACK, tile_seconds

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
    expected_seconds: float | None = None  # the timed forwards' prediction of the whole run (None: not timed)

    def to_dict(self) -> dict[str, object]:
        return {"core": list(self.core), "halo": list(self.halo), "tiles_per_batch": self.tiles_per_batch,
                "tile_shape": list(self.tile_shape), "estimated_bytes": self.estimated_bytes,
                "compute_ratio": self.compute_ratio, "expected_seconds": self.expected_seconds}


_Plan = tuple[list[int], list[int], list[int]]  # cores per axis, core, tile

# A plan computing at most this many times the fewest voxels is good enough: smaller tiles are then preferred
# (flat memory at any volume), down to MIN_TILE_VOXELS voxels per tile (a forward's fixed costs stay small).
SUFFICIENT = 1.1
MIN_TILE_VOXELS = 1 << 22


def suggest_tiling(
    model: nn.Module,
    image_shape: tuple[int, ...],
    *,
    memory_budget: int | None = None,
    device: str = "cpu",
    receptive_field: ReceptiveField | None = None,
    info: ModelInfo | None = None,
    timed: bool = True,
    amp: bool = False,
    chunks: tuple[int, ...] | None = None,
) -> TilingSuggestion:
    """Return the core, halo and tiles per batch that fit ``memory_budget`` bytes and run fastest.

    The halo is the measured receptive-field radius (rounded to the network stride). A tile's memory is the
    *measured* peak of a forward (:func:`~seamfree.tiling.memory.forward_memory`, per voxel, cached per model).
    Among all the numbers of cores per axis whose tiles fit, the one with the fewest voxels computed in total
    (cores plus their recomputed halos; an axis in one core has no halo) comes first, then the one with fewer
    tiles: an axis that one tile already spans is never split, and cores stay as large and as cubic as memory
    allows. ``timed`` (the default): when that plan's tile has at least
    :data:`~seamfree.tiling.throughput.MIN_TIMED_VOXELS`, plans with tiles of a half, a quarter, an eighth and a
    sixteenth of its voxels (computing at most :data:`~seamfree.tiling.throughput.SLACK`× its voxels) are timed
    too, two forwards each, once per architecture and device (:mod:`seamfree.tiling.throughput`), and the one
    predicted fastest (the first forward of a tile shape in a process counted apart) wins if it saves at least
    :data:`~seamfree.tiling.throughput.MIN_GAIN` of the time.
    Default budget: an eighth of the machine's total RAM, at most 4 GiB, on CPU, the same at every call
    (:func:`default_memory_budget`; batch 1 there); half of the free GPU memory on CUDA (batch up to 4).
    ``info``: the model's description (made if not given); ``receptive_field`` replaces its receptive field;
    ``amp``: time the forwards under bfloat16 autocast (CUDA), as the prediction will run them.

    The budget counts what the engine holds around the forward too (:func:`~seamfree.tiling.memory.engine_bytes`:
    the read-ahead batches, the normalized input, the output before and after conversion, the digests), not the
    forward alone. ``chunks``: the input's spatial chunks; the cores are then multiples (or divisors) of them
    wherever such cores fit, so that reads and writes are chunk-aligned and an input chunk is not decoded by many
    tiles (and the plan does not depend on odd tile shapes where a library's convolution is slow).
    """
    info = info or describe_model(model, probe=False)
    rf = receptive_field or info.receptive_field
    dims, stride = info.spatial_dims, info.network_stride
    if len(image_shape) != dims:
        raise ShapeError(f"image_shape {image_shape} has {len(image_shape)} axes, the model is {dims}D")
    budget = memory_budget or default_memory_budget(device)
    memory = forward_memory(model, info.in_channels, stride, device=None if device == "cpu" else device,
                            digest=info.digest)

    def fits(voxels: int) -> bool:
        return memory.bytes(voxels) + engine_bytes(voxels, info.in_channels, info.out_channels) <= budget

    def batch_of(tile: list[int]) -> int:
        return 1 if device == "cpu" else int(max(1, min(4, budget // max(memory.bytes(math.prod(tile)), 1))))

    padded = [round_up(n, s) for n, s in zip(image_shape, stride)]
    align = _alignment(chunks, stride, dims)
    counts, core, tile = _smallest_sufficient(padded, stride, rf.halo, fits, align)
    expected = None
    if timed and fits(math.prod(tile)) and math.prod(tile) >= MIN_TIMED_VOXELS:
        identity = architecture_identity(model, info.digest)

        def seconds(plan: _Plan) -> float:
            batch = batch_of(plan[2])
            timing = tile_seconds(model, info.in_channels, tuple(plan[2]), identity=identity, device=device,
                                  batch=batch, amp=amp)
            return timing.seconds(-(-math.prod(plan[0]) // batch))

        (counts, core, tile), expected = _fastest(_alternatives(padded, stride, rf.halo, fits, (counts, core, tile),
                                                                align), seconds)
    tile_bytes = memory.bytes(math.prod(tile)) + engine_bytes(math.prod(tile), info.in_channels, info.out_channels)
    batch = batch_of(tile)
    ratio = math.prod(k * t for k, t in zip(counts, tile)) / math.prod(image_shape)
    if tile_bytes > budget:
        logger.warning("even the smallest tiles %s need an estimated %.0f MB per forward pass, more than the "
                       "memory budget of %.0f MB: using them (%.1f× the image's voxels computed); give a larger "
                       "budget (CLI --memory-budget) or a core (--core)", tuple(tile), tile_bytes / 1e6,
                       budget / 1e6, ratio)
    logger.info("tiling: core %s, tile %s, %d tiles, %d per batch, %.2f× the image's voxels computed, an estimated "
                "%.0f MB per batch of a %.0f MB budget%s", tuple(core), tuple(tile), math.prod(counts), batch, ratio,
                tile_bytes * batch / 1e6, budget / 1e6,
                "" if expected is None else f", {expected:.2f} s of forwards expected")
    return TilingSuggestion(tuple(core), rf.halo, batch, tuple(tile), int(tile_bytes * batch), ratio, expected)


def _alignment(chunks: tuple[int, ...] | None, stride: tuple[int, ...], dims: int) -> tuple[int, ...] | None:
    """The chunk edge each core should be a multiple or divisor of (None: no chunks, or chunks the stride cannot
    honour)."""
    if chunks is None or len(chunks) != dims:
        return None
    if any(c < s or c % s for c, s in zip(chunks, stride)):
        return None
    return tuple(int(c) for c in chunks)


def _smallest_sufficient(padded: list[int], stride: tuple[int, ...], halo: tuple[int, ...],
                         fits: Callable[[int], bool], align: tuple[int, ...] | None) -> _Plan:
    """The plan with the smallest tiles (at least :data:`MIN_TILE_VOXELS`) that computes at most
    :data:`SUFFICIENT`× the fewest voxels any fitting plan computes: tiles stop growing with the volume once a
    larger one saves less than that, so memory stays flat at any size (a model without halo computes each voxel
    once whatever the tile: its tiles stay near MIN_TILE_VOXELS)."""
    fewest = _fewest_voxels(padded, stride, halo, fits, align)
    least = math.prod(k * t for k, t in zip(fewest[0], fewest[2]))
    chosen, cap = fewest, math.prod(fewest[2]) // 2
    while cap >= MIN_TILE_VOXELS:
        def fits_cap(voxels: int, cap: int = cap) -> bool:
            return voxels <= cap and fits(voxels)

        plan = _fewest_voxels(padded, stride, halo, fits_cap, align)
        if math.prod(plan[2]) > cap or math.prod(k * t for k, t in zip(plan[0], plan[2])) > SUFFICIENT * least:
            break
        chosen, cap = plan, math.prod(plan[2]) // 2
    return chosen


def _alternatives(padded: list[int], stride: tuple[int, ...], halo: tuple[int, ...], fits: Callable[[int], bool],
                  fewest: _Plan, align: tuple[int, ...] | None = None) -> list[_Plan]:
    """``fewest`` first, then the fewest-voxels plans with tiles of at most 1/2, 1/4, 1/8 and 1/16 of its voxels
    that compute at most SLACK× its voxels (distinct tiles only)."""
    def computed(plan: _Plan) -> int:
        return math.prod(k * t for k, t in zip(plan[0], plan[2]))

    plans, largest = [fewest], math.prod(fewest[2])
    for share in (2, 4, 8, 16):
        cap = largest // share

        def fits_cap(voxels: int, cap: int = cap) -> bool:
            return voxels <= cap and fits(voxels)

        plan = _fewest_voxels(padded, stride, halo, fits_cap, align)
        aligned = align is None or all(c % a == 0 or t >= p for c, t, a, p in zip(plan[1], plan[2], align, padded))
        if aligned and math.prod(plan[2]) <= cap and computed(plan) <= SLACK * computed(fewest) \
                and all(plan[2] != other[2] for other in plans):
            plans.append(plan)
    return plans


def _fastest(plans: list[_Plan], seconds: Callable[[_Plan], float]) -> tuple[_Plan, float]:
    """The plan of ``plans`` predicted fastest, and its predicted seconds; the first (fewest voxels) unless another
    saves at least MIN_GAIN of its time."""
    by_size = sorted(range(len(plans)), key=lambda i: math.prod(plans[i][2]))  # smallest first: see throughput
    times = [0.0] * len(plans)
    for i in by_size:
        times[i] = seconds(plans[i])
    best = min(range(len(plans)), key=times.__getitem__)
    if times[best] > (1 - MIN_GAIN) * times[0]:
        best = 0
    if len(plans) > 1:
        logger.info("tiling: timed %s", ", ".join(
            f"{math.prod(p[0])}× tile {tuple(p[2])}: {t:.2f} s" for p, t in zip(plans, times)))
    return plans[best], times[best]


def _fewest_voxels(padded: list[int], stride: tuple[int, ...], halo: tuple[int, ...],
                   fits: Callable[[int], bool],
                   align: tuple[int, ...] | None = None) -> tuple[list[int], list[int], list[int]]:
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
    tiers = [wide, every]
    if align is not None:  # cores that are multiples of the input's chunks (or the whole axis), then divisors
        multiples = [[o for o in axis if o[1] % a == 0 or o[2] >= p] for axis, a, p in zip(wide, align, padded)]
        divisors = [[o for o in axis if o[1] % a == 0 or a % o[1] == 0 or o[2] >= p] or axis
                    for axis, a, p in zip(wide, align, padded)]
        tiers[:0] = [[m or d for m, d in zip(multiples, divisors)], divisors]
    for per_axis in tiers:
        best: tuple[int, int, float, list[tuple[int, int, int]]] | None = None
        for head in itertools.product(*per_axis[:-1]):
            head_voxels = math.prod(t for _, _, t in head)
            last = next((o for o in per_axis[-1] if fits(head_voxels * o[2])), None)  # the fewest cores that fit
            if last is None:
                continue
            choice = [*head, last]
            computed = math.prod(k * t for k, _, t in choice)
            tiles = math.prod(k for k, _, _ in choice)
            # ties go to the more cubic tile (a slab one voxel thick reads across every chunk, and some
            # convolution kernels are many times slower on it)
            aspect = max(t for _, _, t in choice) / min(t for _, _, t in choice)
            if best is None or (computed, tiles, aspect) < best[:3]:
                best = (computed, tiles, aspect, choice)
        if best is not None:
            chosen = best[3]
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
