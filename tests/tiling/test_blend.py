from __future__ import annotations

import numpy as np
import pytest

from seamfree.tiling import BlendAccumulator, TileGrid, weight_window


@pytest.mark.parametrize("window", ["linear", "gaussian"])
@pytest.mark.parametrize("shape", [(70, 53), (20, 37, 29)])
def test_normalized_blend_weights_sum_to_one_everywhere(window, shape):
    grid = TileGrid.create(shape, 16, 4, network_stride=4, overlap=8)
    out = np.zeros((1, *shape), np.float32)

    def emit(region, values):
        out[(slice(None), *region)] = values

    accumulator = BlendAccumulator(grid, 1, window, emit)
    for tile in grid.tiles():
        accumulator.add(tile, np.ones((1, *grid.tile_shape), np.float32))
    assert accumulator.complete
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)  # borders and corners included


def test_linear_ramps_are_a_partition_of_unity():
    weights = weight_window((16,), (8,), "linear")
    # neighbours at step 8 overlap on 8 voxels: their weights add to exactly 1 there
    np.testing.assert_allclose(weights[8:] + weights[:8], 1.0)
    assert weights.min() > 0


def test_blend_buffer_is_bounded_by_a_row_of_tiles():
    shape = (256, 256)
    grid = TileGrid.create(shape, 32, 0, network_stride=1, overlap=8)
    accumulator = BlendAccumulator(grid, 1, "linear", lambda region, values: None)
    for tile in grid.tiles():
        accumulator.add(tile, np.zeros((1, *grid.tile_shape), np.float32))
    assert accumulator.peak_buffered_voxels < 0.25 * np.prod(shape)
