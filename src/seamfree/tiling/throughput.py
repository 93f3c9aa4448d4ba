"""Measured seconds of a forward per tile shape, for throughput-aware tiling.

Memory alone does not choose the fastest tile. On a CPU a larger tile is not always faster per voxel (cache and
allocator effects): MONAI's 2D ``UNet`` took 0.31 µs per voxel on one 2048² tile and 0.19 µs on 544² tiles. So
:func:`~seamfree.tiling.suggest.suggest_tiling` times a few candidate tiles once and predicts each plan's time
as its number of forwards × the measured seconds of one.

A tile's first forward in a process costs far more than the next ones: it faults in the memory the allocator then
keeps (:mod:`seamfree.allocator`). MONAI's ``UNet`` on one 2048² tile: 1.9–2.5 s the first time, 0.97 s from the
third; on 544² tiles 0.08 s, then 0.055 s. A plan of ``n`` forwards is predicted to take ``first + (n - 1) ·
steady`` seconds. Both come from two forwards of random input, batch as planned, under ``inference_mode`` in eval
mode (autocast where the prediction uses it); :func:`~seamfree.tiling.suggest.suggest_tiling` times its candidates
from the smallest tile to the largest, so that each first forward meets a heap no larger than the smaller tiles
left. Timings depend on the architecture, not on the weights' values, so they are kept per architecture, input
channels, device, autocast, CPU threads, batch and tile shape: in this process and on disk beside the receptive
field (:mod:`seamfree.models.field_cache`). The second ``predict`` on a model times nothing, and three calls on
one image choose the same plan.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from seamfree.layers.modes import eval_mode
from seamfree.models.field_cache import load_record, store_record

__all__ = ["MIN_GAIN", "MIN_TIMED_VOXELS", "SLACK", "TileTiming", "tile_seconds"]

logger = logging.getLogger(__name__)

# Plans whose tile has fewer voxels are not timed: such a forward takes a fraction of a second, smaller tiles
# rarely win enough to matter, and the fewest computed voxels decide (1024² or about 101³).
MIN_TIMED_VOXELS = 1 << 20
# Alternatives computing more than SLACK× the fewest voxels are not candidates.
SLACK = 1.3
# Another plan replaces the fewest-voxels one only when predicted at least this much faster: a single timing is
# noisy, and a noisy choice must not move the plan for nothing.
MIN_GAIN = 0.1

_CACHE: dict[tuple[object, ...], TileTiming] = {}


@dataclass(frozen=True)
class TileTiming:
    """Seconds of the first forward on a tile shape in a process, and of each one after it."""

    first: float
    steady: float

    def seconds(self, forwards: int) -> float:
        """Predicted seconds of ``forwards`` forwards on this tile shape."""
        return 0.0 if forwards < 1 else self.first + (forwards - 1) * self.steady


_FAILED = TileTiming(math.inf, math.inf)


def tile_seconds(model: nn.Module, in_channels: int, tile: tuple[int, ...], *, identity: str | None,
                 device: str, batch: int = 1, amp: bool = False) -> TileTiming:
    """The measured first and steady seconds of a forward on ``batch`` tiles of shape ``tile`` (inf where the
    forward fails, out of memory for instance), measured once per architecture ``identity`` and kept (None: not
    kept)."""
    threads = torch.get_num_threads() if device == "cpu" else 0
    key = ("tile seconds", torch.__version__, identity, in_channels, device, amp, threads, batch, *tile)
    if identity is not None:
        if key in _CACHE:
            return _CACHE[key]
        stored = load_record(key) or {}
        first, steady = stored.get("first"), stored.get("steady")
        if all(isinstance(v, int | float) and 0 < v < math.inf for v in (first, steady)):
            _CACHE[key] = TileTiming(float(first), float(steady))  # type: ignore[arg-type]
            return _CACHE[key]
    try:
        timing = _time_forward(model, (batch, in_channels, *tile), device, amp)
    except (RuntimeError, MemoryError) as exc:  # out of memory, mostly: this tile is not a candidate
        logger.debug("timing a %s tile failed (%s): not a candidate", tile, exc)
        return _FAILED
    logger.debug("forwards on %d× %s took %.3f s, then %.3f s", batch, tile, timing.first, timing.steady)
    if identity is not None:
        _CACHE[key] = timing
        store_record(key, {"first": timing.first, "steady": timing.steady})
    return timing


@torch.inference_mode()
def _time_forward(model: nn.Module, shape: tuple[int, ...], device: str, amp: bool) -> TileTiming:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device)
    cuda = device.startswith("cuda")
    seconds = []
    with eval_mode(model), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp and cuda):
        for _ in range(2):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return TileTiming(seconds[0], seconds[1])
