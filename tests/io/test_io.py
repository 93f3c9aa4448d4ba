from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seamfree.errors import DataError, OutputExistsError, ShapeError
from seamfree.io import open_image, parse_axes
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
h5py = pytest.importorskip("h5py")


class Pointwise(nn.Module):
    """A 1×1×1 convolution and a sigmoid: receptive field 0, so the format tests run with halo 0 (tiles = cores)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Pointwise().eval()


def test_the_format_tests_model_needs_no_halo(net):
    from seamfree.tiling import measure_receptive_field

    assert measure_receptive_field(net).halo == (0, 0, 0)


@pytest.fixture
def volume(rng):
    return rng.integers(0, 255, size=(32, 48, 40), dtype=np.uint8)


CONFIG = PredictConfig(core=(8, 16, 16))


def test_zarr_in_zarr_out_equals_in_memory(net, volume, tmp_path):
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=volume.shape, chunks=(8, 16, 16), dtype="u1")
    source[:] = volume
    expected = predict(net, volume, config=CONFIG)
    result = predict(net, tmp_path / "in.zarr", tmp_path / "out.ome.zarr", config=CONFIG)
    np.testing.assert_array_equal(result[:], expected)
    assert not (tmp_path / "out.ome.zarr.seamfree").exists()  # the markers went with the run
    group = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    assert group.attrs["seamfree"]["status"] == "complete" and "fingerprint" in group.attrs["seamfree"]
    assert group["0"].metadata.dimension_names == ("c", "z", "y", "x")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert group["0"].chunks == (1, 8, 16, 16)  # chunks aligned with the cores
    # reading our own OME-Zarr output back goes through level 0
    assert open_image(tmp_path / "out.ome.zarr").shape == (1, *volume.shape)


def test_resume_after_interruption_gives_identical_output(net, volume, tmp_path):
    expected = predict(net, volume, config=CONFIG)
    out = tmp_path / "out.zarr"

    def interrupt(done):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(net, volume, out, config=PredictConfig(core=(8, 16, 16), tiles_per_batch=1), progress=interrupt)
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["seamfree"]["status"] == "incomplete"  # never looks complete
    done = len(list((out.with_name(out.name + ".seamfree") / "done").iterdir()))
    assert 5 <= done < 36
    computed = []
    predict(net, volume, out, config=CONFIG, report=computed)
    assert computed[0].tiles_computed == computed[0].tiles_total - done
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], expected)


def test_blend_resume_and_tiff_output(net, volume, tmp_path):
    config = PredictConfig(core=(8, 16, 16), stitching="blend")
    expected = predict(net, volume, config=config)

    def interrupt(done):
        if done >= 7:
            raise KeyboardInterrupt

    out = tmp_path / "pred.tif"
    with pytest.raises(KeyboardInterrupt):
        predict(net, volume, out, config=PredictConfig(core=(8, 16, 16), stitching="blend", tiles_per_batch=1),
                progress=interrupt)
    assert not out.exists()  # only NAME.partial.tif until complete
    assert (tmp_path / "pred.partial.tif").exists()
    assert predict(net, volume, out, config=config) == out
    np.testing.assert_allclose(tifffile.imread(out).reshape(expected.shape), expected, atol=1e-6)
    before = out.read_bytes()
    assert predict(net, volume, out, config=config) == out  # the same prediction again: complete, nothing to do
    assert out.read_bytes() == before
    with pytest.raises(OutputExistsError, match="already exists"):  # another prediction never replaces it
        predict(net, volume, out, config=PredictConfig(core=(8, 16, 16), stitching="blend", tta=True))


def test_tiff_and_hdf5_inputs(net, volume, tmp_path):
    expected = predict(net, volume, config=CONFIG)
    tifffile.imwrite(tmp_path / "plain.tif", volume)
    tifffile.imwrite(tmp_path / "compressed.tif", volume, compression="zlib", tile=(16, 16))
    with h5py.File(tmp_path / "in.h5", "w") as handle:
        handle.create_dataset("raw", data=volume, chunks=(8, 16, 16))
        handle.create_dataset("other", data=volume[:2])
    for path, key in [("plain.tif", None), ("compressed.tif", None), ("in.h5", "raw")]:
        np.testing.assert_array_equal(predict(net, tmp_path / path, config=CONFIG, **({"axes": None})) if key is None
                                      else predict(net, open_image(tmp_path / path, key=key, spatial_dims=3),
                                                   config=CONFIG), expected)
    with pytest.raises(DataError, match="holds 2 datasets"):
        open_image(tmp_path / "in.h5")


def test_axes_strings_and_channel_last(rng):
    image = rng.random((30, 20, 3))
    source = open_image(image, axes="YXC")
    assert source.shape == (3, 30, 20)
    np.testing.assert_array_equal(source.read((slice(0, 2), slice(5, 6)))[:, :, 0], image[0:2, 5].T)
    assert parse_axes("CZYX", 4) == (0, 3)
    with pytest.raises(ShapeError, match="z, y, x order"):
        parse_axes("XY", 2)
    with pytest.raises(ShapeError, match="do not describe an array with 3 dimensions"):
        parse_axes("YX", 3)
    with pytest.raises(DataError, match="does not exist"):
        open_image("/nonexistent/image.zarr")


def test_unwritable_output_is_reported(net, volume, tmp_path):
    with pytest.raises(OutputExistsError, match="does not exist; create it first"):
        predict(net, volume, tmp_path / "missing" / "out.zarr", config=CONFIG)
    marker = tmp_path / "out.zarr"
    predict(net, volume[:8], marker, config=CONFIG)
    fingerprint = zarr.open_group(str(marker), mode="r").attrs["seamfree"]["fingerprint"]
    assert fingerprint["input"]["shape"] == [1, 8, 48, 40]
