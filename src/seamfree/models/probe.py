"""The empirical tile-dependence probe: what the static audit claims, checked on the model's own outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seamfree.models.geometry import forward_once, round_up

__all__ = ["PROBE_TOLERANCE", "TileProbe", "probe_tiles"]

# a probe core differing by more than this fraction of the output's scale depends on the tile (float noise of
# convolutions on differently sized inputs is ~1e-7 relative)
PROBE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TileProbe:
    """The empirical tile-dependence probe: two windows overlapping by more than twice the halo, shifted by a
    multiple of the network stride, predicted separately; their shared core must agree if tiling is exact.

    The input is noise on an intensity ramp, so that the two windows have different statistics.
    """

    window: tuple[int, ...]
    shift: tuple[int, ...]
    halo: tuple[int, ...]
    max_abs: float
    scale: float
    tolerance: float = PROBE_TOLERANCE

    @property
    def tile_dependent(self) -> bool:
        """Whether the shared core differs beyond float noise."""
        return self.max_abs > self.tolerance * max(self.scale, 1e-6)

    def to_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "shift": list(self.shift), "halo": list(self.halo),
                "max_abs": self.max_abs, "scale": self.scale, "tolerance": self.tolerance,
                "tile_dependent": self.tile_dependent}


def probe_tiles(model: nn.Module, halo: tuple[int, ...], stride: tuple[int, ...], channels: int,
                 select: Callable[[Any], torch.Tensor]) -> TileProbe:
    """Predict two overlapping windows of a ramp + noise image and compare their shared core."""
    dims = len(stride)
    shift = tuple(round_up(16, s) for s in stride)
    window = tuple(2 * h + 2 * t for h, t in zip(halo, shift))
    size = tuple(w + t for w, t in zip(window, shift))
    generator = torch.Generator().manual_seed(7)
    ramp = torch.zeros(size)
    for axis, n in enumerate(size):
        view = [1] * dims
        view[axis] = n
        ramp = ramp + torch.linspace(0.0, 3.0, n).reshape(view)
    image = ramp + torch.randn((channels, *size), generator=generator)
    first = image[(slice(None), *(slice(0, w) for w in window))][None]
    second = image[(slice(None), *(slice(t, t + w) for t, w in zip(shift, window)))][None]
    a = select(forward_once(model, first)).float().cpu()
    b = select(forward_once(model, second)).float().cpu()
    # global positions [t + h, w - h) are at least h inside both windows
    shared_a = tuple(slice(t + h, w - h) for t, h, w in zip(shift, halo, window))
    shared_b = tuple(slice(h, w - h - t) for t, h, w in zip(shift, halo, window))
    core_a, core_b = a[0][(slice(None), *shared_a)], b[0][(slice(None), *shared_b)]
    difference = float((core_a - core_b).abs().max())
    scale = float(core_a.abs().max())
    return TileProbe(window, shift, halo, difference, scale)
