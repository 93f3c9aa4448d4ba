"""A resume trusts nothing it cannot verify: a corrupt or lost block is predicted again, a block whose input
changed is predicted again, and a full disk stops the run with one line and resumes to the reference bitwise."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.models import UNet, save_model
from seamfree.testing import read_output
from seamfree.tiling import IntensityNormalization, PredictConfig, predict

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

# fixed statistics: an input changed in one place keeps the fingerprint's normalization (what a resume compares)
CONFIG = PredictConfig(core=64, tiles_per_batch=1,
                       normalization=IntensityNormalization("percentile", offset=(0.0,), scale=(255.0,)))


class Interrupted(Exception):
    pass


def _stop_after(count: int):
    def progress(done: int) -> None:
        if done >= count:
            raise Interrupted
    return progress


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()


@pytest.fixture
def image(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (256, 256), dtype=np.uint8)
    array = zarr.create_array(str(tmp_path / "input.zarr"), shape=data.shape, chunks=(64, 64), dtype="u1")
    array[:] = data
    return tmp_path / "input.zarr", data


def _read(path):
    return read_output(path)


def _markers(path):
    return path.with_name(path.name + ".seamfree") / "done"


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_a_corrupted_done_block_is_predicted_again(net, image, tmp_path, suffix, caplog):
    source, data = image
    reference = predict(net, data, config=CONFIG)
    out = tmp_path / f"out{suffix}"
    with pytest.raises(Interrupted):
        predict(net, str(source), out, config=CONFIG, progress=_stop_after(6))
    record = json.loads((_markers(out) / "0_0").read_text())
    assert record["window"] == [[0, 64], [0, 64]] and len(record["sha256"]) == 64 and "input_sha256" in record
    if suffix == ".zarr":
        chunk = next(p for p in (out / "0").rglob("*") if p.is_file() and p.parts[-2:] == ("0", "0"))
        chunk.write_bytes(b"\x00garbage" * 16)  # a corrupt chunk: not even decompressible
    else:
        partial = out.with_name("out.partial.tif")
        memmap = tifffile.memmap(str(partial), mode="r+")
        memmap[..., 10:20, 10:20] = 0.123  # the block's pixels differ from what its marker records
        memmap.flush()
        del memmap
    with caplog.at_level(logging.WARNING):
        predict(net, str(source), out, config=CONFIG)
    assert "does not hold the data its marker records" in caplog.text
    np.testing.assert_array_equal(_read(out), reference)


def test_a_block_whose_input_changed_is_predicted_again(net, image, tmp_path, caplog):
    source, data = image
    out = tmp_path / "out.zarr"
    with pytest.raises(Interrupted):
        predict(net, str(source), out, config=CONFIG, progress=_stop_after(8))
    changed = data.copy()
    changed[10:30, 10:30] = 255 - changed[10:30, 10:30]  # inside tile (0, 0), done before the interruption
    zarr.open_array(str(source), mode="r+")[:] = changed
    with caplog.at_level(logging.WARNING):
        predict(net, str(source), out, config=CONFIG)
    assert "changed under" in caplog.text and "(0, 0)" in caplog.text
    np.testing.assert_array_equal(_read(out), predict(net, changed, config=CONFIG))


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_a_full_disk_stops_cleanly_and_the_rerun_resumes_bitwise(net, tmp_path, small_disk, suffix, capsys):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 255, (512, 512), dtype=np.uint8)  # float32 output: 1 MiB, noise compresses poorly
    np.save(tmp_path / "image.npy", data)
    checkpoint = save_model(net, tmp_path / "net.pt")
    filler = small_disk / "filler"
    filler.write_bytes(b"\x01" * (1100 << 10))  # leaves ~400 KiB: the run stops part-way
    out = small_disk / f"out{suffix}"
    argv = ["predict", str(checkpoint), str(tmp_path / "image.npy"), str(out), "--core", "64", "--tiles-per-batch",
            "1", "--intensity-offset", "0", "--intensity-scale", "255", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no space left" in err and len(err.splitlines()) == 1, err
    assert not out.exists() or (suffix == ".zarr" and zarr.open_group(str(out)).attrs["seamfree"]["status"]
                                == "incomplete")
    filler.unlink()  # the user frees space, and runs the same command again
    assert main(argv) == 0
    reference = predict(net, data, config=CONFIG)  # this process, so the same kernels: bitwise
    np.testing.assert_array_equal(_read(out).reshape(reference.shape), reference)


def test_a_missing_input_chunk_is_reported(image, caplog):
    from seamfree.io import open_image

    source, _ = image
    chunk = next(p for p in (source / "c").rglob("*") if p.is_file())
    chunk.unlink()  # lost: zarr would read it as zeros without a word
    with caplog.at_level(logging.WARNING):
        open_image(str(source), spatial_dims=2)
    assert "1 of 16 chunks of the input" in caplog.text and "not stored" in caplog.text


def test_a_blend_output_resumed_over_a_changed_input_predicts_the_changed_cells_again(net, image, tmp_path, caplog):
    source, data = image
    blend = PredictConfig(core=64, stitching="blend", tiles_per_batch=1, normalization=CONFIG.normalization)
    out = tmp_path / "out.zarr"
    with pytest.raises(Interrupted):
        predict(net, str(source), out, config=blend, progress=_stop_after(10))
    changed = data.copy()
    changed[100:140, 100:140] = 255 - changed[100:140, 100:140]  # far from the first 64² voxels
    zarr.open_array(str(source), mode="r+")[:] = changed
    with caplog.at_level(logging.WARNING):
        predict(net, str(source), out, config=blend)
    assert "changed under the blended cell" in caplog.text
    np.testing.assert_array_equal(_read(out), predict(net, changed, config=blend))


def test_an_empty_done_marker_is_not_trusted(net, image, tmp_path, caplog):
    source, data = image
    out = tmp_path / "out.zarr"
    with pytest.raises(Interrupted):
        predict(net, str(source), out, config=CONFIG, progress=_stop_after(8))
    (_markers(out) / "0_0").write_text("")  # truncated by a crash or a full disk ...
    zarr.open_array(str(out / "0"), mode="r+")[..., :64, :64] = 0  # ... and its block never reached the disk
    predict(net, str(source), out, config=CONFIG)
    np.testing.assert_array_equal(_read(out), predict(net, data, config=CONFIG))
