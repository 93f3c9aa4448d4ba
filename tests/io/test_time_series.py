"""Time series (``--axes TYX``, OME-Zarr with a ``t`` axis): predicted frame by frame into a T axis of the output,
each frame exactly what it gives alone; valid OME-Zarr and OME-TIFF; resumable; refused where not supported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.errors import OutputExistsError, ShapeError
from seamfree.io import open_image
from seamfree.io.pyramid import downsample
from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics, read_output
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
CONFIG = PredictConfig(core=64)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_norm_statistics(UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm")).eval()


@pytest.fixture(scope="module")
def movie():
    """Three frames whose brightness falls (bleaching): each is normalized by its own statistics."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 300, 160)).astype(np.float32)
    return (frames * np.array([1.0, 0.6, 0.3])[:, None, None]).astype(np.uint8)


def test_each_frame_is_exactly_its_own_prediction(net, movie):
    series = predict(net, movie, axes="TYX", config=CONFIG)
    assert series.shape == (3, 1, 300, 160)
    for t in range(3):
        np.testing.assert_array_equal(series[t], predict(net, movie[t], config=CONFIG))


def test_zarr_output_has_a_t_axis_that_independent_readers_accept(net, movie, tmp_path):
    ome_image = pytest.importorskip("ome_zarr_models.v05.image")
    ngff_zarr = pytest.importorskip("ngff_zarr")
    out = tmp_path / "out.zarr"
    predict(net, movie, out, axes="TYX", config=PredictConfig(core=64, labels=True, voxel_size=(0.2, 0.2),
                                                                  unit="micrometer"))
    group = zarr.open_group(str(out), mode="r")
    ome_image.Image.from_zarr(group)  # NGFF 0.5, validated by ome-zarr-models
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["t", "c", "y", "x"] and axes[0]["type"] == "time"
    assert group["0"].metadata.dimension_names == ("t", "c", "y", "x")
    assert (group["0"].shards or group["0"].chunks)[0] == 1  # one frame per shard: frames written independently
    multiscales = ngff_zarr.from_ngff_zarr(str(out))
    assert multiscales.images[0].dims == ("t", "c", "y", "x")
    assert multiscales.images[0].scale == {"t": 1.0, "c": 1.0, "y": 0.2, "x": 0.2}
    level0, level1 = np.asarray(group["0"][...]), np.asarray(group["1"][...])
    assert level1.shape == (3, 1, 150, 80)
    for t in range(3):  # every frame downsampled on its own
        np.testing.assert_array_equal(level1[t], downsample(level0[t], "mean"))
    labels = np.asarray(group["labels/mask/0"][...])
    assert labels.shape == (3, 1, 300, 160) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, (level0 > 0.5).astype(np.uint8))


def test_ome_zarr_input_with_a_t_axis_keeps_its_frame_interval(net, movie, tmp_path):
    source = tmp_path / "in.zarr"
    group = zarr.open_group(str(source), mode="w")
    group.create_array("0", data=movie[:, np.newaxis], chunks=(1, 1, 150, 160))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
                 {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space",
                                                                        "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.5, 1, 0.3, 0.3]}]}]}]}
    with pytest.raises(ShapeError, match="time series"):  # one image expected, a series found: said, not guessed
        open_image(str(source), spatial_dims=2)
    out = tmp_path / "out.zarr"
    predict(net, source, out, config=CONFIG)  # no --axes: the metadata says it
    axes = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert axes["axes"][0] == {"name": "t", "type": "time", "unit": "second"}
    assert axes["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.5, 1.0, 0.3, 0.3]
    np.testing.assert_array_equal(read_output(out), predict(net, movie, axes="TYX", config=CONFIG))
    tiff = tmp_path / "out.tif"
    predict(net, source, tiff, config=CONFIG)
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffFile(str(tiff)) as f:
        assert f.series[0].axes == "TYX"  # OME-TIFF: a single channel is squeezed by readers
        pixels = tifffile.xml2dict(f.ome_metadata)["OME"]["Image"]["Pixels"]
    assert pixels["SizeT"] == 3 and pixels["TimeIncrement"] == 2.5 and pixels["TimeIncrementUnit"] == "s"
    assert pixels["PhysicalSizeX"] == pytest.approx(0.3)
    np.testing.assert_array_equal(read_output(tiff), read_output(out))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_an_interrupted_series_resumes_where_it_stopped(net, movie, tmp_path, suffix):
    reference = predict(net, movie, axes="TYX", config=CONFIG)
    out = tmp_path / f"out{suffix}"
    calls = []

    def stop_in_the_second_frame(done):
        calls.append(done)
        if done > 22:  # 15 tiles per frame: frame 0 done, frame 1 half done
            raise _Stop

    with pytest.raises(_Stop):
        predict(net, movie, out, axes="TYX", config=CONFIG, progress=stop_in_the_second_frame)
    report = []
    predict(net, movie, out, axes="TYX", config=CONFIG, report=report)
    assert 0 < report[0].tiles_computed < report[0].tiles_total == 45 and report[0].frames == 3
    np.testing.assert_array_equal(read_output(out), reference)


def test_a_series_resumed_with_another_frame_is_refused(net, movie, tmp_path):
    out = tmp_path / "out.zarr"

    def stop(done):
        if done > 2:
            raise _Stop

    with pytest.raises(_Stop):
        predict(net, movie, out, axes="TYX", config=CONFIG, progress=stop)
    changed = movie.copy()
    changed[2] = 255 - changed[2]
    with pytest.raises(OutputExistsError):
        predict(net, changed, out, axes="TYX", config=CONFIG)


def test_cli_predicts_a_tiff_movie_and_refuses_a_series_where_it_cannot(net, movie, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="minisblack")
    model = save_model(net, tmp_path / "m.pt")
    out = tmp_path / "out.zarr"
    assert main(["predict", str(model), str(tmp_path / "movie.tif"), str(out), "--axes", "TYX", "--core", "64",
                 "-q"]) == 0
    assert "in 3 frames" in capsys.readouterr().out
    np.testing.assert_array_equal(read_output(out), predict(net, movie, axes="TYX", config=CONFIG))
    assert main(["diagnose", str(model), str(tmp_path / "movie.tif"), "--axes", "TYX", "--out",
                 str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "time series (3 frames" in err and "select one frame" in err and "Traceback" not in err
    assert main(["predict", str(model), str(tmp_path / "movie.tif"), str(tmp_path / "x.zarr"), "--axes", "YTX",
                 "-q"]) == 2
    assert "T must come first" in capsys.readouterr().err
    pytest.importorskip("distributed")  # the series is refused before any cluster starts
    assert main(["predict", str(model), str(tmp_path / "movie.tif"), str(tmp_path / "y.zarr"), "--axes", "TYX",
                 "--workers", "2", "-q"]) == 2
    assert "without --workers/--scheduler" in capsys.readouterr().err and not (tmp_path / "y.zarr").exists()


def test_report_json_of_a_series(net, movie):
    report = []
    predict(net, movie, axes="TYX", config=CONFIG, report=report)
    data = json.loads(json.dumps(report[0].to_dict()))
    assert data["frames"] == 3 and data["tiles_total"] == 45
