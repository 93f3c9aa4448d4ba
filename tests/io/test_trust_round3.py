"""Trust, round three (issue 36), for outputs: nothing the user added is destroyed (inside a prediction, in a
report folder, in a training folder), and locks a cluster can live with (atomic, with heartbeat, taken over when
stale from any host, shared by predict and segment of one output)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.errors import ConfigError, OutputExistsError
from seamfree.io.lock import lock_path, output_lock
from seamfree.models import UNet
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")

CONFIG = PredictConfig(core=32, halo=0, allow_small_halo=True)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm").eval()


def test_overwrite_refuses_and_names_what_the_user_added_inside_a_prediction(net, tmp_path, rng):
    image = rng.normal(size=(64, 64)).astype(np.float32)
    out = tmp_path / "pred.zarr"
    predict(net, image, out, config=CONFIG)
    predict(net, image, out, config=PredictConfig(core=32, halo=0, allow_small_halo=True, overwrite=True))
    group = zarr.open_group(str(out), mode="r+")
    group.require_group("labels").create_array("proofread", shape=(64, 64), dtype="u2", chunks=(32, 32))[:] = 7
    (out / "NOTES.txt").write_text("hours of proofreading")
    with pytest.raises(OutputExistsError, match=r"'NOTES.txt', 'labels/proofread'.*did not write"):
        predict(net, image, out, config=PredictConfig(core=32, halo=0, allow_small_halo=True, overwrite=True))
    assert (out / "NOTES.txt").read_text() == "hours of proofreading"
    assert (zarr.open_array(str(out / "labels" / "proofread"))[:] == 7).all()


def test_overwrite_replaces_a_prediction_with_seamfrees_own_labels_and_drops_their_stale_markers(net, tmp_path, rng):
    from seamfree.segment import SegmentConfig, segment

    image = (rng.random((64, 64)) > 0.5).astype(np.float32)
    out = tmp_path / "pred.zarr"
    predict(net, image, out, config=CONFIG)
    segment(str(out), config=SegmentConfig(block=32))
    stale = tmp_path / "pred.zarr.seamfree-labels-stale"  # markers of a segment run killed half-way
    (stale / "segment").mkdir(parents=True)
    (stale / "segment" / "fingerprint.json").write_text("{}")
    predict(net, image, out, config=PredictConfig(core=32, halo=0, allow_small_halo=True, overwrite=True))
    assert not (out / "labels").exists() and not stale.exists()


def test_train_resume_into_a_folder_without_state_refuses_and_changes_nothing(tmp_path):
    from seamfree.training import load_config, train

    run = tmp_path / "old-run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"the earlier run's model")
    (run / "log.csv").write_text("the earlier run's log")
    config = load_config(base={
        "data": {"source": "synthetic", "synthetic_kind": "nuclei", "synthetic_shape": [64, 64],
                 "synthetic_train": 2, "synthetic_val": 1},
        "model": {"depth": 2, "features": 4, "norm": "batchrenorm"},
        "training": {"iterations": 2, "batch_size": 2, "patch_size": [32, 32], "validate_every": 2},
        "output": str(run)})
    with pytest.raises(ConfigError, match=r"no state\.pt.*nothing was changed"):
        train(config, resume=True)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "log.csv"]
    assert (run / "best.pt").read_bytes() == b"the earlier run's model"


def test_a_report_never_replaces_a_file_seamfree_did_not_write(tmp_path, rng):
    from seamfree.diagnostics import DiagnoseConfig, diagnose
    from seamfree.diagnostics.report import write_report

    torch.manual_seed(0)
    model = UNet(2, 1, 1, depth=2, features=4, norm="instance").eval()
    diagnosis = diagnose(model, rng.random((128, 128)).astype(np.float32),
                         config=DiagnoseConfig(core=64, patch_size=32, batch_size=2))
    folder = tmp_path / "report"
    write_report(diagnosis, folder)
    write_report(diagnosis, folder)  # its own files: replaced
    (folder / "report.html").write_text("<p>my notes</p>")  # the user's page now
    before = sorted(p.name for p in (folder / "figures").iterdir())
    with pytest.raises(OutputExistsError, match=r"'report.html'.*did not write"):
        write_report(diagnosis, folder)
    assert (folder / "report.html").read_text() == "<p>my notes</p>"
    assert sorted(p.name for p in (folder / "figures").iterdir()) == before
    other = tmp_path / "mine"
    (other / "figures").mkdir(parents=True)
    (other / "figures" / "indicators.png").write_bytes(b"my figure")
    with pytest.raises(OutputExistsError, match=r"indicators\.png"):
        write_report(diagnosis, other)
    assert not (other / "report.json").exists()


def test_demo_refuses_a_folder_with_the_users_training_run(tmp_path):
    from seamfree.study.demo import run_demo

    mine = tmp_path / "demo" / "train-instance"
    mine.mkdir(parents=True)
    (mine / "best.pt").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="'train-instance'"):
        run_demo(tmp_path / "demo", iterations=1, image_size=128)
    assert (mine / "best.pt").read_bytes() == b"mine"


def _old(path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_locks_that_are_empty_unreadable_or_without_heartbeat_are_taken_over_when_old(tmp_path):
    out = tmp_path / "pred.zarr"
    lock = lock_path(out)
    lock.write_text("")  # a disk full at the start of an older seamfree left it empty
    # young: it may be a writer starting right now
    with pytest.raises(OutputExistsError, match="cannot be read"), output_lock(out):
        pass
    _old(lock)
    with output_lock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "yesterday"}))
    # another host, heartbeat fresh
    with pytest.raises(OutputExistsError, match="process 4242 on node-17"), output_lock(out):
        pass
    _old(lock)  # that node stopped touching its lock an hour ago
    with output_lock(out):
        pass
    assert not lock.exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_host(tmp_path, monkeypatch):
    out = tmp_path / "pred.zarr"
    lock_path(out).write_text(json.dumps({"host": "node-3", "pid": 99, "job": "777_4", "started": "x"}))
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    with output_lock(out):
        assert json.loads(lock_path(out).read_text())["job"] == "777_4"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")  # another task of the array: not its lock
    lock_path(out).write_text(json.dumps({"host": "node-3", "pid": 99, "job": "777_4", "started": "x"}))
    with pytest.raises(OutputExistsError, match="SLURM job 777_4"), output_lock(out):
        pass


def test_a_non_numeric_pid_or_a_zombie_on_this_host_is_a_stale_lock(tmp_path):
    out = tmp_path / "pred.zarr"
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": "not-a-pid", "started": "x"}))
    with output_lock(out):
        pass
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not waited for: a zombie
    stat = Path(f"/proc/{zombie.pid}/stat")
    deadline = time.time() + 30
    while time.time() < deadline and "Z" not in stat.read_text().rsplit(")", 1)[-1][:3]:
        time.sleep(0.05)
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": zombie.pid, "started": "x"}))
    with output_lock(out):
        pass
    zombie.wait()


def test_a_full_disk_at_start_leaves_no_lock(small_disk):
    (small_disk / "filler").write_bytes(b"\0" * (1536 * 1024 - 4096))  # fill the tmpfs to its last page
    try:
        while True:
            with open(small_disk / "more", "ab") as handle:
                handle.write(b"\0" * 512)
    except OSError:
        pass
    out = small_disk / "pred.zarr"
    with output_lock(out) as held:
        assert held is None
    assert not lock_path(out).exists() and not list(small_disk.glob("*.tmp"))


def test_predict_and_segment_of_one_prediction_take_the_same_lock(net, tmp_path, rng):
    from seamfree.segment import SegmentConfig, segment

    out = tmp_path / "pred.zarr"
    predict(net, (rng.random((64, 64)) > 0.5).astype(np.float32), out, config=CONFIG)
    # a predict --overwrite of that prediction is running
    with output_lock(out), pytest.raises(OutputExistsError, match="being written by"):
        segment(str(out), config=SegmentConfig(block=32))
    assert not (out / "labels").exists()


def test_a_dask_worker_reopens_an_input_replaced_at_the_same_path(tmp_path):
    from seamfree.distributed.dask import _worker_source

    path = tmp_path / "image.npy"
    np.save(path, np.zeros((32, 32), np.float32))
    first = _worker_source(str(path), None, 2)
    assert first.read((slice(0, 4), slice(0, 4))).max() == 0
    os.unlink(path)  # replaced between two runs on a persistent cluster
    np.save(path, np.ones((32, 32), np.float32))
    assert _worker_source(str(path), None, 2).read((slice(0, 4), slice(0, 4))).min() == 1


def test_a_scheduler_that_accepts_and_never_answers_is_an_error_within_the_timeout(tmp_path, capsys):
    import threading

    from seamfree.cli.main import main

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    torch.manual_seed(0)
    from seamfree.models import save_model

    save_model(UNet(2, 1, 1, depth=1, features=2).eval(), tmp_path / "m.pt")
    np.save(tmp_path / "img.npy", np.zeros((64, 64), np.float32))
    started = time.monotonic()
    try:
        code = main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.npy"), str(tmp_path / "o.zarr"),
                     "--scheduler", f"tcp://127.0.0.1:{server.getsockname()[1]}", "--timeout", "3", "-q"])
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()
    assert code == 2 and time.monotonic() - started < 60
    assert "did not answer within 3 s" in capsys.readouterr().err


@pytest.mark.parametrize(("image", "says"), [(np.full((64, 64), 1e39), "up to 1e\\+39"),
                                             (np.where(np.eye(64) > 0, 1e300, 1.0), "up to 1e\\+300")])
def test_values_beyond_float32_are_one_clear_error(net, image, says, tmp_path):
    from seamfree.errors import DataError

    with pytest.raises(DataError, match=rf"{says}, beyond float32's range.*rescale"):
        predict(net, image, tmp_path / "o.zarr", config=PredictConfig(core=32))
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(("options", "says"), [({"core": 32.5}, "whole voxels"), ({"core": "32"}, "whole voxels"),
                                               ({"halo": [8, 8.5]}, "whole voxels"), ({"overlap": True}, "whole")])
def test_malformed_predict_options_are_config_errors(options, says):
    with pytest.raises(ConfigError, match=says):
        PredictConfig(**({"stitching": "blend"} if "overlap" in options else {}), **options)
    assert PredictConfig(normalization="meanstd").normalization.method == "meanstd"


@pytest.mark.parametrize("output", [b"out.zarr", ".", "/", "", "..", "folder/"])
def test_outputs_that_are_no_output_are_config_errors(net, output):
    with pytest.raises(ConfigError, match="output"):
        predict(net, np.zeros((64, 64), np.float32), output, config=CONFIG)


def test_a_read_only_output_array_is_a_config_error(net):
    out = np.zeros((1, 64, 64), np.float32)
    out.flags.writeable = False
    with pytest.raises(ConfigError, match="read-only"):
        predict(net, np.zeros((64, 64), np.float32), out, config=CONFIG)


def test_segment_asks_whether_a_short_first_axis_is_channels_and_refuses_nan(tmp_path, capsys):
    from seamfree.cli.main import main
    from seamfree.errors import DataError
    from seamfree.segment import SegmentConfig, segment

    foreground = np.zeros((64, 64), np.float32)
    foreground[5:20, 5:20] = foreground[30:50, 30:50] = 1
    np.save(tmp_path / "fb.npy", np.stack([foreground, np.zeros_like(foreground)]))
    assert main(["segment", str(tmp_path / "fb.npy"), str(tmp_path / "a.zarr"), "-q"]) == 2
    assert "--spatial-dims 2" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "fb.npy"), str(tmp_path / "b.zarr"), "--spatial-dims", "2",
                 "--method", "watershed", "-q"]) == 0
    assert int(zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["0"][:].max()) == 2
    foreground[40, 40] = np.nan
    np.save(tmp_path / "nan.npy", foreground)
    with pytest.raises(DataError, match="NaN or Inf"):
        segment(str(tmp_path / "nan.npy"), tmp_path / "nan.zarr", config=SegmentConfig(spatial_dims=2))


def _malformed(meta: dict, case: str) -> None:
    image = meta["attributes"]["ome"]["multiscales"][0]
    if case == "missing":
        image["datasets"][0]["path"] = "nope"
    elif case == "absolute":
        image["datasets"][0]["path"] = "/etc"
    elif case == "dotdot":
        image["datasets"][0]["path"] = "../x"
    elif case == "not-a-list":
        meta["attributes"]["ome"]["multiscales"] = {"a": 1}
    elif case == "no-datasets":
        del image["datasets"]
    elif case == "axes-not-a-list":
        image["axes"] = "yx"


@pytest.mark.parametrize("case", ["missing", "absolute", "dotdot", "not-a-list", "no-datasets", "axes-not-a-list"])
def test_malformed_ome_metadata_is_a_data_error_for_the_reader_and_napari(net, tmp_path, rng, case):
    from seamfree.errors import DataError
    from seamfree.io.readers import open_image
    from seamfree.napari.reader import get_reader

    store = tmp_path / "pred.zarr"
    predict(net, rng.normal(size=(64, 64)).astype(np.float32), store, config=CONFIG)
    meta = json.loads((store / "zarr.json").read_text())
    _malformed(meta, case)
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"OME-Zarr|no level"):
        open_image(store)
    reader = get_reader(str(store))
    assert reader is not None
    with pytest.raises(DataError):
        reader(str(store))


def test_a_package_whose_description_inflates_to_gigabytes_is_refused_before_inflating(tmp_path):
    from seamfree.errors import CheckpointError
    from seamfree.models import load_model

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("rdf.yaml", "w", force_zip64=True) as member:
        for _ in range(40):  # 40 MB of YAML comments, a few KB stored
            member.write(b"#" * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"rdf\.yaml.*inflates to 41943040 bytes"):
        load_model(bomb)


def test_a_checkpoint_with_a_nan_weight_and_a_model_that_outputs_inf_are_clear_errors(tmp_path, capsys):
    from seamfree.cli.main import main
    from seamfree.errors import DataError
    from seamfree.models import save_model

    torch.manual_seed(0)
    broken = UNet(2, 1, 1, depth=1, features=2).eval()
    with torch.no_grad():
        broken.head.weight[0, 0, 0, 0] = float("nan")
    save_model(broken, tmp_path / "nan.pt")
    np.save(tmp_path / "img.npy", np.zeros((64, 64), np.float32))
    assert main(["predict", str(tmp_path / "nan.pt"), str(tmp_path / "img.npy"), str(tmp_path / "o.zarr"), "-q"]) == 2
    assert "NaN or Inf in 1 parameter(s)/buffer(s): head.weight" in capsys.readouterr().err
    overflowing = torch.nn.Conv2d(1, 1, 1).eval()  # finite weights whose products overflow float32
    with torch.no_grad():
        overflowing.weight.fill_(3e38)
        overflowing.bias.fill_(3e38)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with pytest.raises(DataError, match="infinite values"):
        predict(overflowing, image, config=PredictConfig(core=32, activation="none"))


def test_a_small_store_claiming_absurd_size_is_refused_at_once(net, tmp_path):
    from seamfree.errors import DataError
    from seamfree.io.readers import open_image

    huge = zarr.create_array(str(tmp_path / "huge.zarr"), shape=(10**7, 10**7), chunks=(1000, 1000), dtype="u1")
    huge[:1000, :1000] = 1  # one chunk of 10^8 stored: 20 KB on disk
    started = time.monotonic()
    with pytest.raises(DataError, match=r"claims shape \(10000000, 10000000\).*stores 1 of them"):
        open_image(tmp_path / "huge.zarr")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_names_derived_from_the_output_never_clobber_the_users_files(net, tmp_path, rng, suffix):
    pytest.importorskip("tifffile")
    out = tmp_path / f"out{suffix}"
    side = out.with_name(out.name + ".seamfree")
    side.mkdir()
    (side / "my-notes.txt").write_text("mine")
    image = rng.normal(size=(64, 64)).astype(np.float32)
    with pytest.raises(OutputExistsError, match=r"out\..*\.seamfree' exists and was not written by seamfree"):
        predict(net, image, out, config=CONFIG)
    assert (side / "my-notes.txt").read_text() == "mine"
    if suffix == ".tif":
        side.rename(tmp_path / "elsewhere")
        partial = tmp_path / "out.partial.tif"
        partial.write_bytes(b"my own file")
        with pytest.raises(OutputExistsError, match=r"out\.partial\.tif"):
            predict(net, image, out, config=CONFIG)
        assert partial.read_bytes() == b"my own file"
