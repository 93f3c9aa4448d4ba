"""``segment --shard I/N``: each task labels its share of the first pass, the task that finishes the last share
joins the objects and writes the labels; equal to one process for every method, in any order, rerun-safe."""

from __future__ import annotations

import numpy as np
import pytest

from seamfree.cli.main import main
from seamfree.errors import ConfigError
from seamfree.segment import SegmentConfig, segment
from seamfree.tiling.shards import Shard

zarr = pytest.importorskip("zarr")
ndimage = pytest.importorskip("scipy.ndimage")


@pytest.fixture
def prediction(tmp_path, rng):
    values = ndimage.gaussian_filter(rng.random((24, 80, 90)), 3)
    values = ((values - values.min()) / (values.max() - values.min())).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "pred.zarr"), shape=(1, *values.shape), chunks=(1, 12, 40, 40),
                              dtype="f4")
    array[:] = values[np.newaxis]
    return tmp_path / "pred.zarr"


@pytest.mark.parametrize("method", ["components", "watershed", "distance"])
def test_shares_in_any_order_equal_one_process(prediction, tmp_path, method):
    config = SegmentConfig(block=(12, 32, 32), threshold=0.55)
    reference = segment(str(prediction), tmp_path / "ref.zarr", method=method, config=config)
    results = [segment(str(prediction), tmp_path / "shared.zarr", method=method, config=config,
                       shard=Shard(index, 3)) for index in (2, 0, 1)]
    assert [r.complete for r in results] == [False, False, True]
    assert "shares still to do" in str(results[0].pending)
    assert results[-1].objects == reference.objects > 1
    expected = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")
    found = zarr.open_group(str(tmp_path / "shared.zarr"), mode="r")
    for level in expected.array_keys():
        np.testing.assert_array_equal(np.asarray(found[level]), np.asarray(expected[level]))
    again = segment(str(prediction), tmp_path / "shared.zarr", method=method, config=config, shard=Shard(1, 3))
    assert again.complete and again.objects == reference.objects


def test_refusals_and_the_command_line(prediction, tmp_path, capsys):
    with pytest.raises(ConfigError, match="not an array in memory"):
        segment(np.zeros((20, 20), np.float32), method="components", shard=Shard(0, 2))
    with pytest.raises(ConfigError, match="--overwrite"):
        segment(str(prediction), tmp_path / "x.zarr", method="components",
                config=SegmentConfig(overwrite=True), shard=Shard(0, 2))
    base = ["segment", str(prediction), str(tmp_path / "cli.zarr"), "--block", "12,32,32", "-q"]
    assert main([*base, "--shard", "0/2"]) == 0
    assert "shares still to do" in capsys.readouterr().out
    assert main([*base, "--shard", "1/2"]) == 0
    assert "objects" in capsys.readouterr().out
    assert main([*base, "--shard", "0/2", "--workers", "2"]) == 2
    assert "cannot go with a dask cluster" in capsys.readouterr().err
    reference = segment(str(prediction), tmp_path / "ref.zarr", method="components", config=SegmentConfig(
        block=(12, 32, 32)))
    found = zarr.open_group(str(tmp_path / "cli.zarr"), mode="r")["0"]
    np.testing.assert_array_equal(np.asarray(found), np.asarray(zarr.open_group(str(reference.path))["0"]))
