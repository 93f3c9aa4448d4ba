"""Segmentation runs: two dask workers give the labels of one process, and a CLI run killed at random moments
resumes to the uninterrupted labels."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from segment_helpers import nuclei, write_prediction

from seamfree.segment import SegmentConfig
from seamfree.segment import segment as _segment

pytestmark = pytest.mark.integration  # end to end: runs in CI, not in the inner loop

zarr = pytest.importorskip("zarr")


def segment(prediction, output=None, *, run=None, **options):
    """``seamfree.segment`` with the configuration's fields as keywords (shorter tests)."""
    return _segment(prediction, output, config=SegmentConfig(**options), run=run)
pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segment-runs")
    path = folder / "pred.zarr"
    write_prediction(path, nuclei((40, 72, 80), 40, seed=11, radius=(3, 6)), scale=(1.0, 1.0))
    return folder, path


def test_two_dask_workers_give_the_labels_of_one_process(volume, tmp_path):
    from seamfree.distributed import ClusterConfig, cluster_runner

    _, path = volume
    for method, options in (("watershed", {}), ("components", {"foreground_channel": 0})):
        one = segment(str(path), tmp_path / f"one-{method}.zarr", method=method, block=16, **options)
        with cluster_runner(ClusterConfig(workers=2)) as run:
            two = segment(str(path), tmp_path / f"two-{method}.zarr", method=method, block=16, run=run, **options)
        assert two.objects == one.objects > 10
        np.testing.assert_array_equal(np.asarray(two.labels), np.asarray(one.labels))  # the same ids, bitwise


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_labels(volume, tmp_path):
    _, path = volume
    command = [sys.executable, "-m", "seamfree.cli.main", "segment", str(path), str(tmp_path / "labels.zarr"),
               "--method", "watershed", "--block", "8,16,16", "-q"]
    reference = subprocess.run([*command[:5], str(tmp_path / "reference.zarr"), *command[6:]], capture_output=True,
                               text=True, timeout=600, check=False)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = np.asarray(zarr.open_group(str(tmp_path / "reference.zarr"), mode="r")["0"])
    started = time.perf_counter()
    subprocess.run([*command[:5], str(tmp_path / "timing.zarr"), *command[6:]], check=True, timeout=600)
    duration = time.perf_counter() - started
    rng = np.random.default_rng(3)
    interrupted = 0
    for trial in range(6):
        out = tmp_path / "labels.zarr"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tmp_path / "labels.zarr.seamfree", ignore_errors=True)
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.3, 0.9)) * duration)  # among the passes: mask, seeds, flood, pyramid
        os.killpg(process.pid, signal.SIGKILL)
        interrupted += process.wait() != 0
        lock = tmp_path / "labels.zarr.seamfree.lock"
        finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert finished.returncode == 0, finished.stderr[-2000:]
        assert not lock.exists()
        group = zarr.open_group(str(out), mode="r")
        assert group.attrs["seamfree"]["status"] == "complete", trial
        np.testing.assert_array_equal(np.asarray(group["0"]), expected, err_msg=f"trial {trial}")
    assert interrupted >= 4, f"only {interrupted} of 6 runs were killed before they finished"
