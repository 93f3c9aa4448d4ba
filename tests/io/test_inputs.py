"""Inputs as the field hands them over: dask arrays (read chunk by chunk), zarr groups and arrays, torch tensors,
HDF5 files with several datasets (``--key``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.models import UNet, save_model
from seamfree.tiling import PredictConfig, predict

CONFIG = PredictConfig(core=32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm").eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (96, 80), dtype=np.uint8)


class _Watched:
    """A dask array that records the size of every region read from it."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.chunksize = array.shape, array.dtype, array.chunksize

    def __getitem__(self, index):
        region = self.array[index]
        self.reads.append(int(np.prod(region.shape)))
        return region


def test_a_dask_array_is_read_region_by_region_never_whole(net):
    da = pytest.importorskip("dask.array")
    from seamfree.tiling.normalize import DEFAULT_SLAB_VOXELS

    image = np.random.default_rng(1).integers(0, 255, (3072, 2048), dtype=np.uint8)  # 6.3 M voxels
    watched = _Watched(da.from_array(image, chunks=(512, 512)))
    config = PredictConfig(core=512)
    result = predict(net, watched, config=config)
    np.testing.assert_array_equal(result, predict(net, image, config=config))
    # statistics slab by slab, tiles window by window: no read is the whole image
    assert watched.reads and max(watched.reads) <= DEFAULT_SLAB_VOXELS < image.size, max(watched.reads)


def test_zarr_groups_and_torch_tensors(net, image, tmp_path):
    zarr = pytest.importorskip("zarr")
    expected = predict(net, image, config=CONFIG)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=image.shape, chunks=(32, 40), dtype="u1")[:] = image
    np.testing.assert_array_equal(predict(net, group, config=CONFIG), expected)
    np.testing.assert_array_equal(predict(net, group["raw"], config=CONFIG), expected)
    np.testing.assert_array_equal(predict(net, torch.from_numpy(image), config=CONFIG), expected)


def test_hdf5_with_two_datasets_and_key(net, image, tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as handle:
        handle["raw"] = image
        handle["labels"] = np.zeros_like(image)
    checkpoint = save_model(net, tmp_path / "m.pt")
    out = tmp_path / "out.tif"
    assert main(["predict", str(checkpoint), str(path), str(out), "-q", "--core", "32"]) == 2
    err = capsys.readouterr().err
    assert "holds 2 datasets (labels, raw)" in err and "--key" in err
    assert main(["predict", str(checkpoint), str(path), str(out), "-q", "--core", "32", "--key", "nope"]) == 2
    assert "has no dataset 'nope'; it holds labels, raw" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(path), str(out), "-q", "--core", "32", "--key", "raw"]) == 0
    tifffile = pytest.importorskip("tifffile")
    np.testing.assert_array_equal(tifffile.imread(out).reshape(1, *image.shape), predict(net, image, config=CONFIG))


def test_something_that_is_no_array_is_one_clear_error(net):
    with pytest.raises(Exception, match=r"expected an array .* or a file path, got a dict"):
        predict(net, {"not": "an image"}, config=CONFIG)
