"""``predict --shard I/N``: deterministic balanced shares, shared plan, one writer per share, completion by the
last task, pause on a stop request, and ``seamfree status`` / ``seamfree submit --dry-run`` (the real SLURM runs
are in tests/distributed/test_slurm.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.errors import ConfigError, DataError, OutputExistsError, Paused
from seamfree.io.lock import lock_path
from seamfree.io.progress import output_status, shard_lock_part
from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import PredictConfig, predict
from seamfree.tiling.grid import TileGrid
from seamfree.tiling.shards import Shard, parse_shard, partition, shard_from_environment, shard_tiles

zarr = pytest.importorskip("zarr")


def test_shares_partition_the_tiles_in_balanced_contiguous_runs():
    grid = TileGrid.create((70, 200, 260), (16, 64, 64), (8, 16, 16))
    for count in (1, 2, 3, 7, len(grid), len(grid) + 5):
        bounds = partition(grid, count)
        assert bounds[0] == 0 and bounds[-1] == len(grid) and len(bounds) == count + 1
        sizes = np.diff(bounds)
        assert (sizes >= 0).all() and sizes.max() - sizes.min() <= 1  # every tile computes the same voxels
        assert partition(grid, count) == bounds  # deterministic
        indices = [t.index for i in range(count) for t in shard_tiles(grid, Shard(i, count), bounds)]
        assert indices == [t.index for t in grid.tiles()]  # every tile once, in raster order


def test_a_petabyte_is_cut_into_ten_thousand_shares_at_once():
    grid = TileGrid.create((100_000,) * 3, (128,) * 3, (16,) * 3)
    started = time.perf_counter()
    bounds = partition(grid, 10_000)
    assert time.perf_counter() - started < 10
    sizes = np.diff(bounds)
    assert sizes.sum() == len(grid) and sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize(("environment", "expected"), [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}, Shard(5, 8)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}, Shard(4, 8)),
    ({"LSB_JOBINDEX": "1", "LSB_JOBINDEX_END": "4"}, Shard(0, 4)),
    ({"PBS_ARRAY_INDEX": "3", "PBS_ARRAY_COUNT": "3"}, Shard(2, 3)),
    ({"SGE_TASK_ID": "2", "SGE_TASK_LAST": "10"}, Shard(1, 10)),
    ({"JOB_COMPLETION_INDEX": "6", "SEAMFREE_SHARD_COUNT": "7"}, Shard(6, 7)),
])
def test_auto_reads_the_schedulers_task_index(environment, expected):
    assert shard_from_environment(environment) == expected
    assert parse_shard("auto", environment) == expected


def test_bad_shards_say_what_to_pass():
    assert parse_shard(" 3 / 16 ") == Shard(3, 16)
    for text, message in (("4/4", "0 <= I < N"), ("x", "I/N"), ("1/0", "0 <= I < N")):
        with pytest.raises(ConfigError, match=message):
            parse_shard(text)
    with pytest.raises(ConfigError, match="not a task of a job array"):
        parse_shard("auto", {})
    with pytest.raises(ConfigError, match="SEAMFREE_SHARD_COUNT"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "2"})


@pytest.fixture
def job(tmp_path):
    """A model with running statistics far from identity, an input zarr, and the one-process output."""
    torch.manual_seed(0)
    net = UNet(3, 1, 1, depth=2, features=4, norm="batch")
    randomize_norm_statistics(net)
    net.eval()
    image = np.random.default_rng(0).normal(size=(24, 96, 120)).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(16, 64, 64), dtype="f4")
    array[:] = image
    config = PredictConfig(core=(16, 32, 32), tiles_per_batch=1)
    predict(net, str(tmp_path / "in.zarr"), str(tmp_path / "ref.zarr"), config=config)
    return net, tmp_path, config


def _levels(path):
    group = zarr.open_group(str(path), mode="r")
    return {key: np.asarray(group[key]) for key in sorted(group.array_keys())}


def _assert_same(reference, output):
    expected, found = _levels(reference), _levels(output)
    assert expected.keys() == found.keys()
    for key in expected:
        np.testing.assert_array_equal(found[key], expected[key])


def test_shares_in_any_order_equal_one_process_and_the_last_completes(job):
    net, folder, config = job
    out = str(folder / "out.zarr")
    report: list = []
    for index in (2, 0, 1):
        assert predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(index, 3), report=report) == out
        status = output_status(out)
        assert status["complete"] is (index == 1)
    assert [r.tiles_total for r in report] == [len(list(shard_tiles(report[0].grid, Shard(i, 3)))) for i in (2, 0, 1)]
    assert sum(r.tiles_total for r in report) == len(report[0].grid)
    _assert_same(folder / "ref.zarr", out)
    status = output_status(out)
    assert status["units_done"] == status["units_total"] == len(report[0].grid) and status["shards_total"] == 3
    assert not (folder / "out.zarr.seamfree").exists()
    # a rerun of a share of a complete output does nothing
    again: list = []
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(0, 3), report=again)
    assert again[0].tiles_computed == 0


def test_the_statistics_are_computed_once_and_shared(job, monkeypatch):
    net, folder, _ = job
    config = PredictConfig(core=(16, 32, 32), tiles_per_batch=1)  # percentile statistics from the image
    reference = folder / "stats_ref.zarr"
    predict(net, str(folder / "in.zarr"), str(reference), config=config)
    out = str(folder / "stats.zarr")
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(0, 2))
    import seamfree.tiling.plan as plan_module

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the second task computed the statistics again")

    monkeypatch.setattr(plan_module, "compute_normalization", no_second_pass)
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(1, 2))
    _assert_same(reference, out)


def test_a_stop_request_pauses_after_the_batch_in_flight_and_a_rerun_resumes(job):
    net, folder, config = job
    out = str(folder / "out.zarr")
    batches = []

    def stop() -> bool:
        batches.append(1)
        return len(batches) >= 3

    with pytest.raises(Paused, match=r"shard 0/2 paused at \d+ % \(2 of \d+ tiles\): rerun to resume") as paused:
        predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(0, 2), stop=stop)
    assert paused.value.done == 2
    status = output_status(out)
    assert status["shards"][0]["state"] == "paused" and status["shards"][0]["units_done"] == 2
    assert status["shards"][1]["state"] == "pending" and status["complete"] is False
    assert not lock_path(out, shard_lock_part(0, 2)).exists()  # released
    for index in (1, 0):
        predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(index, 2))
    _assert_same(folder / "ref.zarr", out)


def test_a_share_runs_once_and_a_whole_run_waits_for_the_shares(job):
    net, folder, config = job
    out = str(folder / "out.zarr")
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(0, 2))
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "job": None, "role": "shard", "started": "now"}
    lock = lock_path(out, shard_lock_part(1, 2))
    lock.write_text(json.dumps(holder))  # share 1 runs (this live process holds it)
    with pytest.raises(OutputExistsError, match=f"process {os.getpid()} on"):
        predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(1, 2))
    with pytest.raises(OutputExistsError, match=r"tasks of a job array \(shares 1/2 running\)"):
        predict(net, str(folder / "in.zarr"), out, config=config)
    with pytest.raises(OutputExistsError, match="tasks of 2 shares"):
        predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(0, 3))
    assert output_status(out)["shards"][1]["state"] == "running"
    lock.unlink()
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(1, 2))
    _assert_same(folder / "ref.zarr", out)


def test_a_lock_of_another_host_without_heartbeat_is_taken_over(job, monkeypatch):
    net, folder, config = job
    out = str(folder / "out.zarr")
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(0, 2))
    lock = lock_path(out, shard_lock_part(1, 2))
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "job": None, "role": "shard", "started": "x"}))
    with pytest.raises(OutputExistsError, match="process 4242 on node-17"):
        predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(1, 2))
    old = time.time() - 120
    os.utime(lock, (old, old))
    monkeypatch.setenv("SEAMFREE_LOCK_STALE", "60")
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(1, 2))
    _assert_same(folder / "ref.zarr", out)
    # an empty lock (a crash of another program) older than a minute is stale too
    lock.write_text("")
    os.utime(lock, (old, old))
    monkeypatch.setenv("SEAMFREE_LOCK_STALE", "600")
    predict(net, str(folder / "in.zarr"), out, config=config, shard=Shard(1, 2))


def test_outputs_that_cannot_be_sharded_are_refused(job):
    net, folder, _ = job
    for output, options, message in (
            (folder / "o.tif", {}, "OME-Zarr"),
            (folder / "o.zarr", {"stitching": "blend"}, "crop stitching"),
            (folder / "o.zarr", {"overwrite": True}, "--overwrite"),
            (None, {}, "output path")):
        with pytest.raises(ConfigError, match=message):
            predict(net, str(folder / "in.zarr"), None if output is None else str(output),
                    config=PredictConfig(**{"core": (16, 32, 32), **options}), shard=Shard(0, 2))


def test_cli_shard_status_and_submit(job, capsys):
    net, folder, _ = job
    model = str(save_model(net, folder / "m.pt"))
    base = ["predict", model, str(folder / "in.zarr"), str(folder / "cli.zarr"), "--core", "16,32,32",
            "--tiles-per-batch", "1", "-q"]
    assert main([*base, "--shard", "0/2"]) == 0
    assert "shard 0/2 of" in capsys.readouterr().out
    assert main(["status", str(folder / "cli.zarr")]) == 0
    text = capsys.readouterr().out
    assert "paused" in text and "shard 1/2: pending" in text
    assert main(["status", str(folder / "cli.zarr"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is False
    assert main([*base, "--shard", "1/2"]) == 0
    assert "the output is complete" in capsys.readouterr().out
    assert main(["status", str(folder / "cli.zarr"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True
    _assert_same(folder / "ref.zarr", folder / "cli.zarr")
    # bad input: exit 2 with one line that says what to do
    for argv, message in (([*base, "--shard", "2/2"], "0 <= I < N"),
                          ([*base, "--shard", "0/2", "--workers", "2"], "cannot go with --workers"),
                          (["status", str(folder / "in.zarr")], "not a seamfree output"),
                          (["submit", "predict", *base[1:]], "needs --tasks N"),
                          (["submit", "predict", *base[1:], "--tasks", "2", "--shard", "0/2"], "adds --shard"),
                          (["submit", "predict", *base[1:], "--tasks", "2", "--time", "2h"], "walltime format"),
                          (["submit", "predict", *base[1:], "--tasks", "2", "--workers", "2"], "remove --workers")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert main(["submit", "--dry-run", "predict", *base[1:], "--tasks", "4", "--time", "01:00:00",
                 "--partition", "gpu", "--gpus-per-task", "1", "--extra=--qos=long", "--segment", "components"]) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --array=0-3", "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu", "#SBATCH --requeue",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --qos=long", "#SBATCH --signal=B:USR1@120",
                 '--shard "${SLURM_ARRAY_TASK_ID}/4"', "#SBATCH --dependency=afterok:JOBID", "segment",
                 "scontrol requeue"):
        assert line in script, line
    assert not (folder / "cli.zarr.seamfree-jobs").exists()  # a dry run writes nothing
    assert main(["submit", "--dry-run", "segment", str(folder / "cli.zarr"), "--tasks", "3"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-2" in script and "segment" in script and '--shard "${SLURM_ARRAY_TASK_ID}/3"' in script


def test_status_of_a_single_process_run(job, capsys):
    net, folder, config = job
    out = str(folder / "single.zarr")
    with pytest.raises(Paused):
        predict(net, str(folder / "in.zarr"), out, config=config, stop=lambda: True)
    status = output_status(out)
    assert status["state"] == "paused" and status["shards_total"] is None
    assert status["units_total"] == 12  # 1 × 3 × 4 cores
    with pytest.raises(DataError, match="not a seamfree output"):
        output_status(folder / "nothing.zarr")


@pytest.mark.integration
def test_ctrl_c_pauses_a_whole_run_after_the_batch_in_flight(tmp_path):
    """SIGINT (Ctrl-C) to `seamfree predict`: the batch in flight is written, the run exits with 75 and one line,
    and the same command resumes to the uninterrupted output."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(0)
    model = save_model(UNet(2, 1, 1, depth=2, features=8, norm="batchrenorm").eval(), tmp_path / "m.pt")
    image = np.random.default_rng(3).integers(0, 255, (1024, 1024), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    seamfree = str(Path(sys.executable).parent / "seamfree")

    def command(out):
        return [seamfree, "predict", str(model), str(tmp_path / "image.npy"), str(out), "--core", "64",
                "--tiles-per-batch", "1", "-q"]

    subprocess.run(command(tmp_path / "reference.zarr"), check=True, capture_output=True)
    out = tmp_path / "out.zarr"
    process = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = out.with_name(out.name + ".seamfree") / "done"
    deadline = time.time() + 120
    while time.time() < deadline and not (done.is_dir() and sum(1 for _ in done.iterdir()) >= 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=60)
    assert process.returncode == 75, error
    assert re.search(r"seamfree predict: paused at \d+ % \(\d+ of 256 tiles\)", error), error
    written = sum(1 for _ in done.iterdir())
    assert 3 <= written < 256
    subprocess.run(command(out), check=True, capture_output=True)
    expected, found = zarr.open_group(str(tmp_path / "reference.zarr"), mode="r"), zarr.open_group(str(out), mode="r")
    for key in expected.array_keys():
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(expected[key]))
