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


def _ome_image(group, data, scale):
    group.create_array("0", shape=data.shape, chunks=data.shape, dtype=data.dtype,
                       dimension_names=["y", "x"])[:] = data
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}


@pytest.fixture
def bioformats2raw(tmp_path):
    """The layout bioformats2raw writes for a vendor file with two series (NGFF 0.5 form): a root marked with
    ``bioformats2raw.layout``, one image group per series, and the ``OME`` group listing them."""
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "converted.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    rng = np.random.default_rng(2)
    series = [rng.integers(0, 255, (64, 48), dtype=np.uint8), rng.integers(0, 255, (40, 56), dtype=np.uint8)]
    for index, data in enumerate(series):
        _ome_image(root.create_group(str(index)), data, [0.5 * (index + 1), 0.5 * (index + 1)])
    root.create_group("OME").attrs["ome"] = {"version": "0.5", "series": ["0", "1"]}
    return path, series


def test_bioformats2raw_reads_series_0_by_default_and_series_n_when_asked(net, bioformats2raw, tmp_path):
    zarr = pytest.importorskip("zarr")
    path, series = bioformats2raw
    checkpoint = save_model(net, tmp_path / "m.pt")
    np.testing.assert_array_equal(predict(net, path, config=CONFIG), predict(net, series[0], config=CONFIG))
    np.testing.assert_array_equal(predict(net, path, config=CONFIG, key="1"), predict(net, series[1], config=CONFIG))
    out = tmp_path / "series1.zarr"
    assert main(["predict", str(checkpoint), str(path), str(out), "-q", "--core", "32", "--series", "1"]) == 0
    scale = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    assert scale["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]  # series 1's own voxel size


def test_a_series_out_of_range_lists_the_series(net, bioformats2raw, tmp_path, capsys):
    path, _ = bioformats2raw
    checkpoint = save_model(net, tmp_path / "m.pt")
    assert main(["predict", str(checkpoint), str(path), str(tmp_path / "o.zarr"), "-q", "--series", "5"]) == 2
    error = capsys.readouterr().err
    assert "no series 5" in error and "2 series (0, 1)" in error and "--series N" in error
    assert len(error.strip().splitlines()) == 1
    assert main(["predict", str(checkpoint), str(path), str(tmp_path / "o.zarr"), "-q", "--series", "1",
                 "--key", "0"]) == 2


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server of ``tmp_path`` (the tests have no internet: a real server on the loopback)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_ome_zarr_at_an_http_url_is_predicted_with_its_calibration(net, image, tmp_path, http_server):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("aiohttp")
    _ome_image(zarr.open_group(str(tmp_path / "served.zarr"), mode="w"), image, [0.25, 0.5])
    out = tmp_path / "out.zarr"
    predict(net, f"{http_server}/served.zarr", out, config=CONFIG)
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(group["0"][...]), predict(net, image, config=CONFIG))
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == \
        [1.0, 0.25, 0.5]


def test_an_unreachable_url_fails_fast_with_one_line(net, tmp_path, capsys):
    import socket
    import time

    pytest.importorskip("aiohttp")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    checkpoint = save_model(net, tmp_path / "m.pt")
    started = time.monotonic()
    assert main(["predict", str(checkpoint), f"http://127.0.0.1:{port}/image.zarr", str(tmp_path / "o.zarr"),
                 "-q"]) == 2
    error = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 30
    assert len(error.splitlines()) == 1 and f"127.0.0.1:{port}/image.zarr" in error and "reachable" in error


@pytest.fixture
def rgb():
    rng = np.random.default_rng(4)
    return rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)


def test_an_rgb_tiff_has_three_channels_not_a_thousand(rgb, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from seamfree.io.readers import open_image

    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with open_image(tmp_path / "rgb.tif", spatial_dims=2) as source:
        assert source.shape == (3, 96, 80)
        np.testing.assert_array_equal(source.read_all(), np.moveaxis(rgb, -1, 0))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_pictures_are_read_with_their_colour_channels(rgb, tmp_path, suffix):
    imageio = pytest.importorskip("imageio.v3")
    from seamfree.io.readers import open_image

    imageio.imwrite(tmp_path / f"picture{suffix}", rgb)
    with open_image(tmp_path / f"picture{suffix}", spatial_dims=2) as source:
        assert source.shape == (3, 96, 80) and source.dtype == np.uint8
        if suffix == ".png":  # lossless
            np.testing.assert_array_equal(source.read_all(), np.moveaxis(rgb, -1, 0))


def test_channels_and_gray_pick_or_merge_the_input_channels(net, rgb, tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v3")
    zarr = pytest.importorskip("zarr")
    imageio.imwrite(tmp_path / "picture.png", rgb)
    checkpoint = save_model(net, tmp_path / "m.pt")
    def mean(channels):
        return np.rint(rgb[..., channels].astype(np.float64).mean(axis=-1)).astype(np.uint8)

    for flags, expected in ((["--gray"], mean([0, 1, 2])), (["--channels", "1"], rgb[..., 1]),
                            (["--channels", "0,2", "--gray"], mean([0, 2]))):
        out = tmp_path / f"out{len(flags)}{flags[-1].replace(',', '')}.zarr"
        assert main(["predict", str(checkpoint), str(tmp_path / "picture.png"), str(out), "-q", "--core", "32",
                     *flags]) == 0
        np.testing.assert_array_equal(np.asarray(zarr.open_group(str(out), mode="r")["0"][...]),
                                      predict(net, expected, config=CONFIG), err_msg=" ".join(flags))
    # without a selection a 3-channel picture does not fit a 1-channel model: said in one line
    assert main(["predict", str(checkpoint), str(tmp_path / "picture.png"), str(tmp_path / "x.zarr"), "-q"]) == 2
    assert main(["predict", str(checkpoint), str(tmp_path / "picture.png"), str(tmp_path / "y.zarr"), "-q",
                 "--channels", "5"]) == 2
    error = capsys.readouterr().err
    assert "channels [5] do not exist" in error and "3 channel(s)" in error and "--channels" in error
