"""kill -9 at random moments, then the same command again: the output is bitwise the uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from seamfree.models import UNet, load_model, save_model
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

TRIALS = 10


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A model, an image, the in-process reference and how long one uninterrupted CLI run takes here."""
    folder = tmp_path_factory.mktemp("kill")
    torch.manual_seed(0)
    model = save_model(UNet(2, 1, 2, depth=2, features=8, norm="batchrenorm").eval(), folder / "m.pt")
    image = np.random.default_rng(3).integers(0, 255, (512, 512), dtype=np.uint8)
    np.save(folder / "image.npy", image)
    reference = predict(load_model(model), image, config=PredictConfig(core=64, tiles_per_batch=1))
    started = time.perf_counter()
    subprocess.run(_command(folder, model, folder / "timing.zarr"), check=True, capture_output=True, timeout=300)
    return folder, model, reference, time.perf_counter() - started


def _command(folder, model, out):
    return [sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(folder / "image.npy"), str(out),
            "--core", "64", "--tiles-per-batch", "1", "-q"]


def _read(path):
    if path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r")
        assert group.attrs["seamfree"]["status"] == "complete"
        return np.asarray(group["0"][:])
    return tifffile.imread(str(path))


def _markers(out):
    return out / ".seamfree" / "done" if out.suffix == ".zarr" else out.with_name(out.name + ".seamfree") / "done"


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_output(job, tmp_path, suffix):
    folder, model, reference, seconds = job
    rng = np.random.default_rng(11)
    midway = 0
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}{suffix}"
        process = subprocess.Popen(_command(folder, model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.35, 0.9)) * seconds)  # mostly among the 64 tiles, sometimes before
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if suffix == ".tif":
            # a killed TIFF run never looks complete (it is still NAME.partial.tif), unless it had finished
            assert not out.exists() or process.returncode == 0
        midway += _markers(out).is_dir() and any(_markers(out).iterdir())
        finished = subprocess.run(_command(folder, model, out), capture_output=True, text=True, timeout=300,
                                  check=False)
        assert finished.returncode == 0, finished.stderr[-2000:]
        np.testing.assert_array_equal(_read(out), reference, err_msg=f"trial {trial}")
    assert midway >= TRIALS // 2, f"only {midway} of {TRIALS} kills landed after the first tile"
