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
from seamfree.testing import read_output
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

TRIALS = 10


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A model, an image and the uninterrupted CLI run's output (the reference)."""
    folder = tmp_path_factory.mktemp("kill")
    torch.manual_seed(0)
    model = save_model(UNet(2, 1, 2, depth=2, features=8, norm="batchrenorm").eval(), folder / "m.pt")
    image = np.random.default_rng(3).integers(0, 255, (1024, 1024), dtype=np.uint8)  # 256 tiles
    np.save(folder / "image.npy", image)
    out = folder / "reference.zarr"
    subprocess.run(_command(folder, model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    reference = _read(out)
    # the library in this process agrees to rounding (the CLI process may pick other kernels: last-bit changes)
    in_process = predict(load_model(model), image, config=PredictConfig(core=64, tiles_per_batch=1))
    np.testing.assert_allclose(reference, in_process, rtol=0, atol=1e-6)
    return folder, model, reference


def _command(folder, model, out):
    return [sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(folder / "image.npy"), str(out),
            "--core", "64", "--tiles-per-batch", "1", "-q"]


def _read(path):
    return read_output(path)


def _complete(out):
    if out.suffix == ".zarr":
        return out.exists() and zarr.open_group(str(out), mode="r").attrs["seamfree"]["status"] == "complete"
    return out.exists()


def _markers(out):
    return out.with_name(out.name + ".seamfree") / "done"


def _kill_after(process, out, tiles, delay):
    """SIGKILL ``process`` ``delay`` seconds after its ``tiles``-th done marker (or when it ends first).

    Counting markers instead of sleeping a fixed time keeps the kills among the tiles on any machine: a cold
    first run and a loaded CI runner take several times as long as a warm one.
    """
    markers = _markers(out)
    while process.poll() is None and not (markers.is_dir() and sum(1 for _ in markers.iterdir()) >= tiles):
        time.sleep(0.002)
    time.sleep(delay)  # a random moment inside the next tiles: mid-forward, mid-write, mid-marker
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_output(job, tmp_path, suffix):
    folder, model, reference = job
    rng = np.random.default_rng(11)
    midway = 0
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}{suffix}"
        process = subprocess.Popen(_command(folder, model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_after(process, out, tiles=int(rng.integers(1, 250)), delay=float(rng.uniform(0, 0.05)))
        if _complete(out):  # whatever claims to be complete is: a TIFF is renamed only after its last tile
            np.testing.assert_array_equal(_read(out), reference, err_msg=f"trial {trial}, before resuming")
        midway += _markers(out).is_dir() and any(_markers(out).iterdir())
        finished = subprocess.run(_command(folder, model, out), capture_output=True, text=True, timeout=300,
                                  check=False)
        assert finished.returncode == 0, finished.stderr[-2000:]
        np.testing.assert_array_equal(_read(out), reference, err_msg=f"trial {trial}")
    assert midway >= TRIALS - 1, f"only {midway} of {TRIALS} kills landed among the tiles"
