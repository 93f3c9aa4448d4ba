"""The measured receptive field is minimal: the halo it gives is exact, one network stride less is not."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seamfree.models import UNet
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import TileGrid, measure_receptive_field, suggest_tiling
from seamfree.tiling.grid import MAX_TILE_TO_CORE_RATIO, round_up
from seamfree.tiling.memory import engine_bytes, forward_memory

CASES = [("2d", 2, None, 2), ("2d-depth4", 2, None, 4), ("3d", 3, None, 2),
         ("anisotropic", 3, [(1, 2, 2), (2, 2, 2)], 2)]


def _net(dims, factors, depth=2):
    torch.manual_seed(0)
    net = UNet(dims, 1, 1, depth=depth, features=4, norm="batch", scale_factors=factors)
    return randomize_norm_statistics(net).eval()


@torch.no_grad()
def _stitched(model, image, grid):
    """Crop-stitch ``grid``'s tiles of ``image`` (1, *spatial) through ``model`` (no padding needed)."""
    out = torch.zeros_like(image)
    for tile in grid.tiles():
        prediction = model(image[(slice(None), slice(None), *tile.read)])
        out[(slice(None), slice(None), *tile.write)] = prediction[(slice(None), slice(None), *tile.crop)]
    return out


@pytest.mark.parametrize(("name", "dims", "factors", "depth"), CASES, ids=[c[0] for c in CASES])
def test_the_measured_halo_is_exact_and_one_stride_less_is_not(name, dims, factors, depth):
    """In float64, where rounding cannot hide the tails of the receptive field (1e-11 of the output here, below
    float32 rounding): along each axis, crop stitching
    with the measured halo equals the whole-image forward, and with one network stride less it does not.

    The halo comes from the context each stride phase needs, not from the radius: the depth-4 U-Net has radius
    107 but needs a halo of 96, not 112 (the radius rounded up)."""
    net = _net(dims, factors, depth).double()
    rf = measure_receptive_field(net)
    stride = rf.network_stride
    generator = torch.Generator().manual_seed(1)
    for axis in range(dims):
        # long on ``axis`` only (several cores there, one elsewhere), a multiple of the stride everywhere
        core = tuple(rf.halo[a] if a == axis else 4 * s for a, s in enumerate(stride))
        shape = tuple(4 * c if a == axis else c for a, c in enumerate(core))
        image = torch.randn((1, 1, *shape), generator=generator, dtype=torch.float64)
        with torch.no_grad():
            whole = net(image)
        smaller = tuple(h - s if a == axis else h for a, (h, s) in enumerate(zip(rf.halo, stride)))
        exact = _stitched(net, image, TileGrid.create(shape, core, rf.halo, network_stride=stride))
        inexact = _stitched(net, image, TileGrid.create(shape, core, smaller, network_stride=stride))
        scale = float(whole.abs().max())
        assert float((exact - whole).abs().max()) <= 1e-14 * scale, f"halo {rf.halo} is not exact along {axis}"
        assert float((inexact - whole).abs().max()) > 1e-12 * scale, f"halo {smaller} is still exact along {axis}"
    assert all(c <= r for c, r in zip(rf.context, rf.radius))


@functools.cache
def _measured_2d():
    net = _net(2, None)
    return net, measure_receptive_field(net)


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(16, 3000), st.integers(16, 3000)), budget_kib=st.integers(64, 1 << 16))
def test_suggested_tiles_stay_within_the_memory_budget(shape, budget_kib):
    net, rf = _measured_2d()
    budget = budget_kib << 10
    suggestion = suggest_tiling(net, shape, memory_budget=budget, receptive_field=rf)
    stride = rf.network_stride
    # the smallest cores the grid accepts (a tile at most MAX_TILE_TO_CORE_RATIO× its core) when none fits
    smallest = [max(s, round_up(-(-2 * h // (MAX_TILE_TO_CORE_RATIO - 1)), s)) for h, s in zip(rf.halo, stride)]
    at_minimum = all(c <= m for c, m in zip(suggestion.core, smallest))
    assert suggestion.estimated_bytes <= budget or at_minimum
    memory = forward_memory(net, 1, stride)
    voxels, batch = math.prod(suggestion.tile_shape), suggestion.tiles_per_batch
    # the forward's measured memory and what the engine holds around it (read-ahead, conversion, digests)
    assert suggestion.estimated_bytes == memory.bytes(voxels, batch) + engine_bytes(voxels, 1, 1, batch)
    # the cores cover the image, and a core is never larger than the (padded) image
    assert all(-(-n // c) * c >= n for n, c in zip(shape, suggestion.core))
    assert all(c <= -(-n // s) * s for n, c, s in zip(shape, suggestion.core, stride))
