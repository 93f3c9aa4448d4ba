"""``--scheduler-file``: a dask scheduler and worker started by the user (as dask-mpi or SLURMRunner start them),
found through their scheduler file; the output equals one process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.models import UNet, save_model
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def test_a_scheduler_found_through_its_file(tmp_path, rng, capsys):
    scheduler_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--scheduler-file", str(scheduler_file), "--port",
                                   "0", "--dashboard-address", ":0"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        processes.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                                           "--nthreads", "1", "--nworkers", "1"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        torch.manual_seed(0)
        net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
        model = save_model(net, tmp_path / "m.pt")
        image = rng.normal(size=(150, 140)).astype(np.float32)
        array = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(64, 64), dtype="f4")
        array[:] = image
        assert main(["predict", str(model), str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), "--core", "64",
                     "--tiles-per-batch", "1", "--scheduler-file", str(scheduler_file), "--worker-timeout", "60",
                     "-q"]) == 0
        assert "tasks on 1 workers" in capsys.readouterr().out
        expected = predict(net, image, config=PredictConfig(core=64, tiles_per_batch=1))
        np.testing.assert_allclose(zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[:], expected,
                                   rtol=0, atol=1e-6)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
