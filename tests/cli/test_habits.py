"""CLI habits of the field: ``--device auto``, ``-v`` after the command, and inputs as people have them
(a pyramidal OME-TIFF, read at level 0)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.models import UNet, save_model

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    save_model(UNet(2, 1, 1, depth=1, features=2).eval(), tmp_path / "m.pt")
    image = np.random.default_rng(0).gamma(2.0, 300.0, (128, 128)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)
    return tmp_path, image


def test_device_auto_runs_on_this_machine(files):
    folder, _ = files
    assert main(["predict", str(folder / "m.pt"), str(folder / "img.tif"), str(folder / "a.zarr"), "--device", "auto",
                 "-q"]) == 0
    from seamfree.models.checkpoint import auto_device
    from seamfree.tiling import PredictConfig

    expected = "cuda" if torch.cuda.is_available() else auto_device()
    assert PredictConfig(device="auto").device == auto_device() == expected
    assert auto_device() in ("cuda", "mps", "cpu")


def test_verbose_is_accepted_after_the_command(files, caplog):
    folder, _ = files
    with caplog.at_level(logging.DEBUG):
        assert main(["predict", str(folder / "m.pt"), str(folder / "img.tif"), str(folder / "v.zarr"), "-v"]) == 0
    assert any(record.levelno == logging.DEBUG for record in caplog.records)
    assert main(["-v", "predict", str(folder / "m.pt"), str(folder / "img.tif"), str(folder / "w.zarr")]) == 0


def test_a_pyramidal_ome_tiff_is_read_at_level_0(files):
    folder, image = files
    with tifffile.TiffWriter(folder / "pyr.ome.tif") as tif:
        tif.write(image, subifds=2, metadata={"axes": "YX"}, tile=(64, 64))
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64))
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64))
    assert main(["predict", str(folder / "m.pt"), str(folder / "pyr.ome.tif"), str(folder / "p.zarr"), "-q"]) == 0
    assert main(["predict", str(folder / "m.pt"), str(folder / "img.tif"), str(folder / "i.zarr"), "-q"]) == 0
    level0 = np.asarray(zarr.open_group(str(folder / "p.zarr"), mode="r")["0"])
    assert level0.shape[-2:] == image.shape
    np.testing.assert_array_equal(level0, np.asarray(zarr.open_group(str(folder / "i.zarr"), mode="r")["0"]))


def test_messages_name_the_flags_that_fix_them_and_a_batch_axis_is_accepted(files, capsys):
    folder, _ = files
    from PIL import Image

    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / "rgb.png")
    assert main(["predict", str(folder / "m.pt"), str(folder / "rgb.png"), str(folder / "r.zarr"), "-q"]) == 2
    error = capsys.readouterr().err
    assert "--gray" in error and "--channels" in error
    np.save(folder / "batch.npy", np.random.default_rng(2).random((1, 1, 64, 64)).astype(np.float32))
    assert main(["predict", str(folder / "m.pt"), str(folder / "batch.npy"), str(folder / "b.zarr"), "-q"]) == 2
    assert "--axes TCYX" in capsys.readouterr().err
    assert main(["predict", str(folder / "m.pt"), str(folder / "batch.npy"), str(folder / "b.zarr"), "--axes", "BCYX",
                 "-q"]) == 0


def test_audit_json_has_one_verdict(files, capsys):
    import json

    folder, _ = files
    capsys.readouterr()
    assert main(["audit", str(folder / "m.pt"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["verdict"] == document["model"]["verdict"] and "static_verdict" in document
