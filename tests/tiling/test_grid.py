from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seamfree.errors import ConfigError, HaloError
from seamfree.tiling import TileGrid


@st.composite
def geometries(draw):
    dims = draw(st.sampled_from([2, 3]))
    stride = tuple(draw(st.sampled_from([1, 2, 4, 8])) for _ in range(dims))
    shape = tuple(draw(st.integers(1, 90 if dims == 2 else 30)) for _ in range(dims))
    core = tuple(draw(st.integers(1, 40)) for _ in range(dims))
    halo = tuple(draw(st.integers(0, 12)) for _ in range(dims))
    return shape, core, halo, stride


def _grid_or_skip(shape, core, halo, stride, overlap=0):
    try:
        return TileGrid.create(shape, core, halo, network_stride=stride, overlap=overlap)
    except HaloError:
        return None
    except ConfigError as exc:
        if "overlap" not in str(exc):
            raise
        return None


@settings(max_examples=300, deadline=None)
@given(geometries())
def test_crop_cores_partition_the_image_exactly(geometry):
    shape, core, halo, stride = geometry
    grid = _grid_or_skip(shape, core, halo, stride)
    if grid is None:
        return
    count = np.zeros(shape, dtype=np.int32)
    padded = grid.padded_shape
    for tile in grid.tiles():
        count[tile.write] += 1
        for read, crop, write, s, p, h in zip(tile.read, tile.crop, tile.write, stride, padded, grid.halo):
            assert read.start % s == 0, "tile windows start on the network stride"
            assert (read.stop - read.start) % s == 0
            assert read.start >= 0 and read.stop <= p, "tiles stay inside the padded image"
            assert crop.stop - crop.start == write.stop - write.start
            assert read.start + crop.start == write.start
            # the core has the full halo of real context, or reaches the padded border
            assert write.start - read.start >= h or read.start == 0
            assert read.stop - write.stop >= h or read.stop == p
        assert tuple(r.stop - r.start for r in tile.read) == grid.tile_shape
    assert (count == 1).all(), "every voxel written exactly once"


@settings(max_examples=200, deadline=None)
@given(geometries(), st.integers(0, 40))
def test_shifted_grids_also_partition_the_image_with_full_context(geometry, offset):
    shape, core, halo, stride = geometry
    try:
        grid = TileGrid.create(shape, core, halo, network_stride=stride, offset=offset)
    except HaloError:
        return
    count = np.zeros(shape, dtype=np.int32)
    for tile in grid.tiles():
        count[tile.write] += 1
        for read, write, s, p, h in zip(tile.read, tile.write, stride, grid.padded_shape, grid.halo):
            assert read.start % s == 0 and write.start % s == 0
            assert write.start - read.start >= h or read.start == 0
            assert read.stop - write.stop >= h or read.stop == p
    assert (count == 1).all()


@settings(max_examples=200, deadline=None)
@given(geometries(), st.integers(1, 16))
def test_blend_cores_cover_the_image(geometry, overlap):
    shape, core, halo, stride = geometry
    grid = _grid_or_skip(shape, core, halo, stride, overlap)
    if grid is None:
        return
    count = np.zeros(shape, dtype=np.int32)
    for tile in grid.tiles():
        count[tile.write] += 1
        assert all(r.start % s == 0 for r, s in zip(tile.read, stride))
    assert (count >= 1).all()


def test_alignment_and_errors(caplog):
    caplog.set_level("INFO", logger="seamfree")
    grid = TileGrid.create((100, 100), 30, 5, network_stride=8)
    assert grid.core == (32, 32)
    assert grid.halo == (8, 8)
    assert "rounded up" in caplog.text
    with pytest.raises(ConfigError, match=r"core \(30, 30\) is not a multiple of the network stride \(8, 8\)"):
        TileGrid.create((100, 100), 30, 5, network_stride=8, pinned=True)
    with pytest.raises(HaloError, match="larger than the core"):
        TileGrid.create((1000, 1000), 8, 64, network_stride=8)
    with pytest.raises(ConfigError, match="overlap"):
        TileGrid.create((100, 100), 32, 0, network_stride=8, overlap=32)
    with pytest.raises(ConfigError, match="one value per spatial axis"):
        TileGrid.create((100, 100), (32, 32, 32), 0)


def test_image_smaller_than_a_tile_uses_one_tile_of_the_padded_image():
    grid = TileGrid.create((13, 200), 64, 16, network_stride=8)
    assert grid.padded_shape == (16, 200)
    assert grid.tile_shape == (16, 96)
    assert grid.grid_shape[0] == 1
