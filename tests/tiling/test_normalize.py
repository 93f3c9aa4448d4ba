"""Streamed intensity statistics against numpy on the whole array: exact for 8/16-bit, bounded when sampled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seamfree.io import open_image
from seamfree.tiling import IntensityNormalization, compute_normalization
from seamfree.tiling.normalize import SlabStatistics, iter_slabs

percentile_pairs = st.tuples(st.floats(0, 60), st.floats(0, 40)).map(lambda p: (p[0], min(100.0, p[0] + p[1] + 0.5)))


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.uint8, np.uint16]), shape=st.tuples(st.integers(1, 40), st.integers(1, 50)),
       percentiles=percentile_pairs, seed=st.integers(0, 2**31 - 1))
def test_integer_percentiles_equal_numpy_percentile(dtype, shape, percentiles, seed):
    rng = np.random.default_rng(seed)
    high_value = np.iinfo(dtype).max
    image = rng.integers(0, rng.integers(1, high_value, endpoint=True), size=shape, endpoint=True).astype(dtype)
    low, high = percentiles
    result = compute_normalization(open_image(image, spatial_dims=2), IntensityNormalization("percentile", low, high))
    lo, hi = np.percentile(image, [low, high])
    assert result.offset == pytest.approx((lo,), rel=0, abs=1e-9)
    assert result.scale == pytest.approx((max(hi - lo, 1e-6),), rel=0, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(200, 300), st.integers(200, 300)), seed=st.integers(0, 2**31 - 1),
       percentiles=st.sampled_from([(1.0, 99.8), (5.0, 95.0), (0.5, 99.0)]))
def test_sampled_float_percentiles_have_a_bounded_rank_error(shape, seed, percentiles):
    """Float images are sampled (``max_samples`` voxels, evenly strided): the percentile found lies within one
    percentile point, in rank, of the exact one."""
    rng = np.random.default_rng(seed)
    image = (rng.gamma(2.0, 30.0, size=shape) + rng.normal(0, 5, size=shape)).astype(np.float32)
    low, high = percentiles
    result = compute_normalization(open_image(image, spatial_dims=2), IntensityNormalization("percentile", low, high),
                                   max_samples=4000)
    found_low, found_high = result.offset[0], result.offset[0] + result.scale[0]
    rank_low = 100 * np.mean(image <= found_low)
    rank_high = 100 * np.mean(image <= found_high)
    assert abs(rank_low - low) <= 1.0 and abs(rank_high - high) <= 1.0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("method", ["percentile", "meanstd"])
def test_slab_statistics_merged_in_order_equal_one_sequential_pass(dtype, method, rng):
    """What the distributed pass does (statistics per slab on workers, merged in slab order) is bitwise the
    sequential pass."""
    image = rng.gamma(2.0, 300.0, size=(2, 70, 90)).astype(dtype)
    source = open_image(image, spatial_dims=2)
    windows = list(iter_slabs(source, slab_voxels=512))
    assert len(windows) > 4
    sequential, merged = SlabStatistics.for_source(source, 2000), SlabStatistics.for_source(source, 2000)
    for window in windows:
        sequential.add(source, window)
        single = SlabStatistics(merged.channels, merged.total, merged.histograms is not None, merged.stride)
        single.add(source, window)
        merged.merge(single)
    assert merged.finish(IntensityNormalization(method)) == sequential.finish(IntensityNormalization(method))
    if method == "percentile" and dtype == np.uint16:  # exact histograms: also equal to numpy
        expected = np.percentile(image.reshape(2, -1), [1.0, 99.8], axis=1)
        assert merged.finish(IntensityNormalization(method)).offset == pytest.approx(tuple(expected[0]), abs=1e-9)
