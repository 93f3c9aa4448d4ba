"""Distributed prediction: equals single-process prediction, resumes after kills, survives a lost worker."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from seamfree.distributed import ClusterConfig, predict_distributed  # noqa: E402
from seamfree.errors import ConfigError, DataError, OutputExistsError  # noqa: E402
from seamfree.models import UNet, load_model, save_model  # noqa: E402
from seamfree.testing import randomize_norm_statistics  # noqa: E402
from seamfree.tiling import IntensityNormalization, PredictConfig, predict  # noqa: E402

pytestmark = pytest.mark.integration  # end to end: runs in CI, not in the inner loop

CONFIG = PredictConfig(core=(8, 32, 32), tiles_per_batch=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    torch.manual_seed(0)
    net = randomize_norm_statistics(UNet(3, 1, 2, depth=1, features=4, norm="batchrenorm")).eval()
    model = save_model(net, folder / "model.pt")
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=(24, 96, 128)).astype(np.float32)
    array = zarr.create_array(str(folder / "volume.zarr"), shape=volume.shape, chunks=(8, 32, 32), dtype="f4")
    array[:] = volume
    reference = predict(net, volume, config=CONFIG)
    return folder, model, reference


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of two single-threaded workers for the tests that do not kill or count anything."""
    from seamfree.distributed import start_local_cluster

    with start_local_cluster(ClusterConfig(workers=2)) as local:
        yield ClusterConfig(scheduler=local.scheduler_address)


def _output(path):
    group = zarr.open_group(str(path), mode="r")
    return group.attrs["seamfree"]["status"], np.asarray(group["0"][:])


def test_two_workers_give_the_single_process_result_bitwise(inputs, cluster, tmp_path):
    folder, model, reference = inputs
    report = predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG,
                                 cluster=ClusterConfig(scheduler=cluster.scheduler, tiles_per_task=3))
    status, result = _output(tmp_path / "out.zarr")
    assert status == "complete" and report.tiles_computed == report.tiles_total > 4 and report.workers == 2
    np.testing.assert_array_equal(result, reference)
    again = predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG,
                                cluster=cluster)
    assert again.tiles_computed == 0  # everything was marked done: nothing to redo
    # the same output can be resumed by the single-process engine and vice versa: one fingerprint
    predict(_load(model), str(folder / "volume.zarr"),
            tmp_path / "out.zarr", config=CONFIG)


def test_the_near_exact_mode_gives_the_single_process_result_on_a_cluster(inputs, cluster, tmp_path):
    folder, model, _ = inputs
    config = PredictConfig(core=(8, 32, 32), tiles_per_batch=1, halo="effective", max_error=1e-2)
    report = predict_distributed(model, folder / "volume.zarr", tmp_path / "near.zarr", config=config,
                                 cluster=cluster)
    found = []
    single = predict(_load(model), str(folder / "volume.zarr"), config=config, report=found)
    check = report.halo_check
    assert check is not None and check.halo == found[0].halo_check.halo and check.error <= 0.5 * 1e-2
    np.testing.assert_array_equal(_output(tmp_path / "near.zarr")[1], single)


def _load(path):
    from seamfree.models import load_model

    return load_model(path)


def test_distributed_statistics_equal_the_sequential_pass(inputs, cluster, tmp_path):
    folder, model, _ = inputs
    config = PredictConfig(core=(8, 32, 32), tiles_per_batch=1, normalization=IntensityNormalization("meanstd"))
    predict_distributed(model, folder / "volume.zarr", tmp_path / "a.zarr", config=config, cluster=cluster)
    single = predict(_load(model), str(folder / "volume.zarr"), config=config)
    np.testing.assert_array_equal(_output(tmp_path / "a.zarr")[1], single)


def test_losing_a_worker_mid_run_still_gives_identical_output(inputs, tmp_path):
    from distributed import Client, LocalCluster

    folder, model, reference = inputs
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())

        def kill_one():
            marker = tmp_path / "out.zarr.seamfree" / "done"
            deadline = time.time() + 60
            while time.time() < deadline and not (marker.exists() and any(marker.iterdir())):
                time.sleep(0.05)
            os.kill(pids[0], signal.SIGKILL)  # mid-run: some tiles are done, most are not

        killer = threading.Thread(target=kill_one)
        killer.start()
        predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG,
                            cluster=ClusterConfig(scheduler=cluster.scheduler_address, tiles_per_task=1))
        killer.join()
    status, result = _output(tmp_path / "out.zarr")
    assert status == "complete"
    np.testing.assert_array_equal(result, reference)


def test_bad_input_is_refused_clearly(inputs, cluster, tmp_path):
    folder, model, _ = inputs
    started = time.perf_counter()
    with pytest.raises(DataError, match="could not reach the dask scheduler"):
        predict_distributed(model, folder / "volume.zarr", tmp_path / "o.zarr", config=CONFIG,
                            cluster=ClusterConfig(scheduler="tcp://127.0.0.1:1", timeout=3))
    assert time.perf_counter() - started < 30
    with pytest.raises(ConfigError, match="path every worker can open"):
        predict_distributed(model, np.zeros((20, 70, 90)), tmp_path / "o.zarr", config=CONFIG,  # type: ignore[arg-type]
                            cluster=cluster)
    with pytest.raises(ConfigError, match="OME-Zarr"):
        predict_distributed(model, folder / "volume.zarr", tmp_path / "o.tif", config=CONFIG)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root can write anywhere; the check is meaningful otherwise
            with pytest.raises(OutputExistsError, match="not writable"):
                predict_distributed(model, folder / "volume.zarr", locked / "o.zarr", config=CONFIG,
                                    cluster=cluster)
    finally:
        locked.chmod(0o700)
    big = zarr.create_array(str(tmp_path / "big.zarr"), shape=(20, 70, 90), chunks=(20, 70, 90), dtype="f4")
    big[:] = 1.0
    with pytest.raises(DataError, match="rechunk"):
        predict_distributed(model, tmp_path / "big.zarr", tmp_path / "o.zarr",
                            config=PredictConfig(core=(8, 16, 16), halo=(0, 0, 0), allow_small_halo=True,
                                                 tiles_per_batch=1), cluster=cluster)


def test_resume_with_other_settings_is_refused(inputs, cluster, tmp_path):
    folder, model, _ = inputs
    predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG, cluster=cluster)
    with pytest.raises(OutputExistsError, match=r"fingerprint|different"):
        predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr",
                            config=PredictConfig(core=(8, 32, 32), tiles_per_batch=1, tta=True), cluster=cluster)


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_identical_output(inputs, tmp_path):
    folder, model, reference = inputs
    rng = np.random.default_rng(7)
    command = [sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(folder / "volume.zarr"),
               str(tmp_path / "out.zarr"), "--workers", "2", "--core", "8,32,32", "--tiles-per-batch", "1",
               "--tiles-per-task", "1", "-q"]
    for run in range(10):
        out = tmp_path / "out.zarr"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(2.0, 9.0)))  # startup, statistics, or somewhere among the tiles
        os.killpg(process.pid, signal.SIGKILL)  # the driver and its whole LocalCluster
        process.wait()
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert finished.returncode == 0, finished.stderr[-2000:]
        status, result = _output(out)
        assert status == "complete", run
        np.testing.assert_array_equal(result, reference, err_msg=f"run {run}")


def test_a_quiet_cli_run_on_a_cluster_prints_nothing_of_dask(inputs, tmp_path):
    folder, model, reference = inputs
    command = [sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(folder / "volume.zarr"),
               str(tmp_path / "out.zarr"), "--workers", "2", "--core", "8,32,32", "--tiles-per-batch", "1", "-q"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stderr.strip() == "", finished.stderr[-2000:]  # no scheduler, nanny or worker lines
    assert finished.stdout.strip().splitlines()[-1].startswith("wrote ")
    np.testing.assert_array_equal(_output(tmp_path / "out.zarr")[1], reference)
    verbose = subprocess.run([*command[:3], "--verbose", *command[3:-1], "--overwrite"], capture_output=True,
                             text=True, timeout=300, check=False)
    assert verbose.returncode == 0 and "distributed." in verbose.stderr  # --verbose shows them


def _malloc_environment():
    return {name: os.environ.get(name) for name in ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_")}


def test_workers_with_the_tuned_allocator_give_the_same_output(inputs, tmp_path):
    from distributed import Client
    from seamfree.allocator import ALLOCATOR_ENVIRONMENT
    from seamfree.distributed import start_local_cluster

    folder, model, reference = inputs
    before = _malloc_environment()
    with start_local_cluster(ClusterConfig(workers=1, tune_allocator=True)) as cluster, Client(cluster) as client:
        (seen,) = client.run(_malloc_environment).values()
        predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG,
                            cluster=ClusterConfig(scheduler=cluster.scheduler_address))
    assert seen == {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": ALLOCATOR_ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]}
    np.testing.assert_array_equal(_output(tmp_path / "out.zarr")[1], reference)
    with start_local_cluster(ClusterConfig(workers=1)) as cluster, Client(cluster) as client:
        (default,) = client.run(_malloc_environment).values()
    assert default["MALLOC_ARENA_MAX"] is None  # off unless asked for: dask's own settings
    assert _malloc_environment() == before  # the driver's own environment is left as it was


def test_only_a_window_of_tasks_is_on_the_cluster_at_a_time(inputs, tmp_path, monkeypatch):
    import seamfree.distributed.dask as driver
    from distributed import Client, LocalCluster

    monkeypatch.setattr(driver, "TASKS_IN_FLIGHT", 2)  # window = max(2, 4 × 1 thread) = 4 tasks
    folder, model, reference = inputs
    known = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        def count(done, total):
            known.append(client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))

        report = predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG,
                                     cluster=ClusterConfig(scheduler=cluster.scheduler_address, tiles_per_task=1),
                                     progress=count)
    assert report.tasks == len(known) > 4 + 2
    assert max(known) <= 4 + 2  # finished tasks are released (asynchronously: a little slack); never all at once
    np.testing.assert_array_equal(_output(tmp_path / "out.zarr")[1], reference)


def test_trust_code_reaches_the_workers(inputs, cluster, tmp_path):
    """A torch.export program loads only with consent, on the driver and on every worker."""
    from seamfree.errors import CheckpointError
    from seamfree.models import load_model

    folder, model, reference = inputs
    net = load_model(model)
    dims = {axis: 2 * torch.export.Dim(f"d{axis}", min=2, max=512) for axis in (2, 3, 4)}
    program = torch.export.export(net, (torch.zeros(1, 1, 8, 32, 32),), dynamic_shapes={"x": dims})
    exported = tmp_path / "model.pt2"
    torch.export.save(program, str(exported))
    with pytest.raises(CheckpointError, match="trust_code"):
        predict_distributed(exported, folder / "volume.zarr", tmp_path / "refused.zarr", config=CONFIG,
                            cluster=cluster)
    # an exported program outputs logits and does not say so: the softmax a seamfree model gets is asked for
    config = dataclasses.replace(CONFIG, activation="softmax")
    predict_distributed(exported, folder / "volume.zarr", tmp_path / "out.zarr", config=config, cluster=cluster,
                        trust_code=True)
    status, result = _output(tmp_path / "out.zarr")
    assert status == "complete" and np.abs(result - reference).max() <= 1e-5


def test_key_chooses_the_array_of_a_group_on_every_worker(inputs, cluster, tmp_path):
    folder, model, reference = inputs
    volume = zarr.open_array(str(folder / "volume.zarr"), mode="r")[:]
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("raw", shape=volume.shape, chunks=(8, 32, 32), dtype="f4")[:] = volume
    group.create_array("other", shape=(4, 4, 4), dtype="f4")
    with pytest.raises(DataError, match="choose one with key"):
        predict_distributed(model, tmp_path / "group.zarr", tmp_path / "refused.zarr", config=CONFIG, cluster=cluster)
    predict_distributed(model, tmp_path / "group.zarr", tmp_path / "out.zarr", config=CONFIG, cluster=cluster,
                        key="raw")
    status, result = _output(tmp_path / "out.zarr")
    assert status == "complete"
    np.testing.assert_array_equal(result, reference)


def test_channels_and_gray_reach_every_worker(inputs, cluster, tmp_path):
    """A 3-channel input for a 1-channel model: --channels 1 reads one channel, --gray their mean, on the driver
    (statistics) and on every worker (tiles) alike."""
    folder, model, _ = inputs
    volume = zarr.open_array(str(folder / "volume.zarr"), mode="r")[:]
    stack = np.stack([volume, volume * 0.5 + 10, volume * 2 - 50]).astype(np.float32)
    zarr.create_array(str(tmp_path / "rgb.zarr"), shape=stack.shape, chunks=(3, 8, 32, 32), dtype="f4")[:] = stack
    net = load_model(model)
    for name, options, expected in (("one", {"channels": (1,)}, stack[1]),
                                    ("gray", {"gray": True}, stack.mean(axis=0, dtype=np.float64).astype(np.float32))):
        predict_distributed(model, tmp_path / "rgb.zarr", tmp_path / f"{name}.zarr", config=CONFIG, cluster=cluster,
                            axes="CZYX", **options)
        status, result = _output(tmp_path / f"{name}.zarr")
        assert status == "complete"
        np.testing.assert_allclose(result, predict(net, expected, config=CONFIG), atol=1e-5, err_msg=name)


def test_the_pyramid_and_labels_are_written_by_the_workers(cluster, tmp_path, monkeypatch):
    """After level 0, the pyramid's and the labels' blocks run as tasks on the cluster (the driver writes none),
    and every array equals the single-process output's."""
    import seamfree.io.pyramid as pyramid
    import seamfree.io.zarr_output as zarr_output
    from seamfree.io.pyramid import downsample

    torch.manual_seed(0)
    net = randomize_norm_statistics(UNet(2, 1, 1, depth=1, features=4, norm="batchrenorm")).eval()
    model = save_model(net, tmp_path / "model.pt")
    image = np.random.default_rng(3).normal(100, 20, size=(600, 520)).astype(np.float32)
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(128, 128), dtype="f4")[:] = image
    config = PredictConfig(core=128, labels=True, tiles_per_batch=1)
    reference = tmp_path / "reference.zarr"
    predict(net, tmp_path / "image.zarr", reference, config=config)

    def not_here(*args, **kwargs):
        raise AssertionError("the driver wrote pyramid or label blocks itself")

    monkeypatch.setattr(pyramid, "_downsample_jobs", not_here)
    monkeypatch.setattr(zarr_output, "_label_jobs", not_here)
    predict_distributed(model, tmp_path / "image.zarr", tmp_path / "out.zarr", config=config, cluster=cluster)
    out, expected = zarr.open_group(str(tmp_path / "out.zarr"), mode="r"), zarr.open_group(str(reference), mode="r")
    assert out.attrs["seamfree"]["status"] == "complete"
    # level 0 as in one process (to the last bit where the threads agree: the workers run 1 thread, this process 2)
    level0 = np.asarray(out["0"][...])
    np.testing.assert_allclose(level0, np.asarray(expected["0"][...]), atol=1e-6)
    levels = [level0, downsample(level0, "mean")]
    levels.append(downsample(levels[1], "mean"))
    masks = [(level0 > 0.5).astype(np.uint8)]
    masks += [masks[0][:, ::2, ::2], masks[0][:, ::4, ::4]]
    for level in (1, 2):
        np.testing.assert_array_equal(np.asarray(out[str(level)][...]), levels[level])
    for level in (0, 1, 2):
        np.testing.assert_array_equal(np.asarray(out[f"labels/mask/{level}"][...]), masks[level])
    assert out.attrs["ome"] == expected.attrs["ome"]


def test_a_scheduler_whose_only_worker_died_is_a_clear_error_not_an_endless_wait(inputs, tmp_path):
    from distributed import LocalCluster

    folder, model, _ = inputs
    with LocalCluster(n_workers=0, processes=True, protocol="tcp", dashboard_address=None) as scheduler:
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", scheduler.scheduler_address,
                                   "--nworkers", "1", "--nthreads", "1", "--no-nanny", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            scheduler.wait_for_workers(1, timeout=60)

            def kill_the_worker(done, total):
                if worker.poll() is None:
                    worker.kill()

            started = time.monotonic()
            with pytest.raises(DataError, match="no dask worker has been connected"):
                predict_distributed(model, folder / "volume.zarr", tmp_path / "out.zarr", config=CONFIG,
                                    cluster=ClusterConfig(scheduler=scheduler.scheduler_address, worker_timeout=3,
                                                          tiles_per_task=1),
                                    progress=kill_the_worker)
            assert time.monotonic() - started < 60
        finally:
            worker.kill()
            worker.wait()
    status, _ = _output(tmp_path / "out.zarr")
    assert status == "incomplete"  # and a rerun with workers resumes it


def test_a_worker_of_another_seamfree_version_is_refused(monkeypatch):
    from distributed import Client, LocalCluster
    from seamfree.distributed import cluster as dask_module
    from seamfree.errors import DataError

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as local, \
            Client(local) as client:
        dask_module._check_worker_versions(client, local.scheduler_address)  # the same version: fine
        monkeypatch.setattr(dask_module, "_worker_version", lambda: "0.0.1-elsewhere")  # a worker of another install
        with pytest.raises(DataError, match=r"1 worker\(s\).*another seamfree version.*0\.0\.1-elsewhere"):
            dask_module._check_worker_versions(client, local.scheduler_address)
