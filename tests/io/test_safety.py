"""Never destroy what the user had, never run a stranger's code: --overwrite, input = output, symlinks,
payloads in model and state files, and devices checked before anything loads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.errors import CheckpointError, ConfigError, OutputExistsError
from seamfree.models import UNet, load_model, save_model
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

CONFIG = PredictConfig(core=32, halo=0, allow_small_halo=True)


def _digest(path: Path) -> str:
    """Checksum of a file or of every file below a folder (names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm").eval()


@pytest.fixture
def user_zarr(tmp_path, rng):
    """The user's own data: a zarr image seamfree never wrote."""
    path = tmp_path / "rawdata.zarr"
    array = zarr.create_array(str(path), shape=(64, 64), chunks=(32, 32), dtype="u1")
    array[:] = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    return path


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_the_input_is_never_the_output_even_with_overwrite(net, tmp_path, rng, suffix):
    image = tmp_path / f"raw{suffix}"
    if suffix == ".zarr":
        zarr.create_array(str(image), shape=(64, 64), chunks=(32, 32), dtype="u1")[:] = 7
    else:
        tifffile.imwrite(str(image), rng.integers(0, 255, (64, 64), dtype=np.uint8))
    before = _digest(image)
    for output in (image, Path(os.path.relpath(image)), image.parent / "." / image.name):
        with pytest.raises(OutputExistsError, match="would overwrite the input"):
            predict(net, image, output, config=PredictConfig(core=32, overwrite=True))
    assert _digest(image) == before


def test_an_output_inside_the_input_store_is_refused(net, user_zarr):
    with pytest.raises(OutputExistsError, match="would overwrite the input"):
        predict(net, user_zarr, user_zarr / "prediction.zarr", config=CONFIG)


def test_overwrite_refuses_data_seamfree_did_not_write(net, user_zarr, tmp_path, rng):
    before = _digest(user_zarr)
    image = rng.normal(size=(64, 64)).astype(np.float32)
    with pytest.raises(OutputExistsError, match=r"is a zarr store with \d+ entries that seamfree did not write"):
        predict(net, image, user_zarr, config=PredictConfig(core=32, overwrite=True))
    assert _digest(user_zarr) == before
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="is a folder with 1 entry that seamfree did not write"):
        predict(net, image, folder, config=PredictConfig(core=32, overwrite=True))
    plain = tmp_path / "file.zarr"
    plain.write_bytes(b"not a store")
    with pytest.raises(OutputExistsError, match="is a file of 11 bytes that seamfree did not write"):
        predict(net, image, plain, config=PredictConfig(core=32, overwrite=True))
    foreign_tiff = tmp_path / "theirs.tif"
    tifffile.imwrite(str(foreign_tiff), np.zeros((64, 64), np.uint8))
    tiff_before = _digest(foreign_tiff)
    with pytest.raises(OutputExistsError, match="that seamfree did not write"):
        predict(net, image, foreign_tiff, config=PredictConfig(core=32, overwrite=True))
    assert (folder / "mine.txt").read_text() == "keep me" and plain.read_bytes() == b"not a store"
    assert _digest(foreign_tiff) == tiff_before


def test_overwrite_never_deletes_through_a_symbolic_link(net, tmp_path, rng):
    image = rng.normal(size=(64, 64)).astype(np.float32)
    real = tmp_path / "real.zarr"
    predict(net, image, real, config=CONFIG)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    before = _digest(real)
    with pytest.raises(OutputExistsError, match=r"symbolic link .* pass the real path"):
        predict(net, image, link, config=PredictConfig(core=32, halo=0, allow_small_halo=True, overwrite=True))
    assert _digest(real) == before and link.is_symlink()


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_overwrite_replaces_seamfree_outputs(net, tmp_path, rng, suffix):
    image = rng.normal(size=(64, 64)).astype(np.float32)
    out = tmp_path / f"prediction{suffix}"
    predict(net, image, out, config=CONFIG)
    predict(net, image * 2, out, config=PredictConfig(core=32, halo=0, allow_small_halo=True, overwrite=True))
    expected = predict(net, image * 2, config=CONFIG)
    stored = zarr.open_group(str(out), mode="r")["0"][:] if suffix == ".zarr" else tifffile.imread(str(out))
    np.testing.assert_array_equal(stored.reshape(expected.shape), expected)  # an OME-TIFF squeezes one channel


def test_the_cli_refuses_with_one_line_and_exit_2(net, user_zarr, tmp_path, capsys):
    model = save_model(net, tmp_path / "m.pt")
    before = _digest(user_zarr)
    assert main(["predict", str(model), str(user_zarr), str(user_zarr), "--overwrite", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would overwrite the input" in err
    assert _digest(user_zarr) == before


class _Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["model.pt", "model.pt2", "model.pth"])
def test_model_files_never_run_code_without_trust_code(tmp_path, name, capsys):
    marker = tmp_path / "payload-ran"
    path = tmp_path / name
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="trust_code=True"):
        load_model(path)
    assert main(["audit", str(path)]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert not marker.exists()


def test_a_planted_training_state_never_runs_code(tmp_path):
    from seamfree.training import load_config, train

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "payload-ran"
    torch.save({"step": _Payload(marker)}, out / "state.pt")
    config = load_config(overrides=[f"output={out}", "training.iterations=2", "training.patch_size=[32,32]",
                                    "data.synthetic_shape=[64,64]", "model.depth=1", "model.features=2"])
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(config, resume=True)
    assert not marker.exists()


def test_devices_are_checked_before_the_model_loads(tmp_path, net, capsys):
    model = save_model(net, tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="'bogus' is not a device name"):
        load_model(model, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"CUDA requested .* pass --device cpu"):
            load_model(model, device="cuda")
        assert main(["predict", str(model), str(tmp_path / "x.npy"), str(tmp_path / "o.zarr"),
                     "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "CUDA requested" in err and "trust_code" not in err


@pytest.mark.parametrize("name", ["pred.png", "pred.npy", "pred.h5"])
def test_unsupported_output_extensions_are_an_error_not_a_zarr_folder(net, tmp_path, rng, name):
    with pytest.raises(ConfigError, match=r"cannot write an output named .* use a \.zarr path"):
        predict(net, rng.normal(size=(64, 64)).astype(np.float32), tmp_path / name, config=CONFIG)
    assert not (tmp_path / name).exists()


def test_a_second_writer_of_the_same_output_stops_and_leaves_it_alone(net, tmp_path, rng):
    from seamfree.io.lock import lock_path, output_lock

    out = tmp_path / "pred.zarr"
    image = rng.normal(size=(64, 64)).astype(np.float32)
    with output_lock(out):  # the first writer, still running
        with pytest.raises(OutputExistsError, match=rf"being written by process {os.getpid()} on "):
            predict(net, image, out, config=CONFIG)
        assert not out.exists()
    assert not lock_path(out).exists()  # released
    predict(net, image, out, config=CONFIG)
    assert not lock_path(out).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(net, tmp_path, rng):
    import json
    import socket
    import subprocess
    import sys

    from seamfree.io.lock import lock_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    out = tmp_path / "pred.zarr"
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
    predict(net, rng.normal(size=(64, 64)).astype(np.float32), out, config=CONFIG)
    assert zarr.open_group(str(out), mode="r").attrs["seamfree"]["status"] == "complete"


@pytest.mark.integration
def test_two_concurrent_cli_predictions_one_proceeds_and_the_result_is_the_reference(tmp_path, rng):
    import subprocess
    import sys
    import time

    from seamfree.io.lock import lock_path

    torch.manual_seed(0)
    slow = UNet(2, 1, 1, depth=3, features=16, norm="batchrenorm").eval()
    model = save_model(slow, tmp_path / "m.pt")
    image = rng.integers(0, 255, (512, 512), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / "pred.zarr"
    command = [sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(tmp_path / "image.npy"), str(out),
               "--core", "64", "-q"]
    alone = [*command[:6], str(tmp_path / "alone.zarr"), *command[7:]]
    subprocess.run(alone, check=True, capture_output=True, timeout=300)  # the reference: one writer, undisturbed
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as first:
        deadline = time.time() + 60
        while not lock_path(out).exists() and time.time() < deadline:
            time.sleep(0.02)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and "is being written by process" in second.stderr
    expected = zarr.open_group(str(tmp_path / "alone.zarr"), mode="r")["0"][:]
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], expected)


def test_training_never_silently_replaces_a_previous_run(tmp_path):
    from seamfree.training import load_config, train

    out = tmp_path / "run"
    overrides = [f"output={out}", "training.iterations=2", "training.patch_size=[32,32]", "training.validate_every=2",
                 "data.synthetic_shape=[64,64]", "model.depth=1", "model.features=2"]
    train(load_config(overrides=overrides))
    best = (out / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"is not empty \(best\.pt, .*--resume.*--overwrite"):
        train(load_config(overrides=overrides))
    assert (out / "best.pt").read_bytes() == best
    train(load_config(overrides=overrides), overwrite=True)


@pytest.mark.parametrize(("make", "pattern"), [
    (lambda p: p.write_bytes(b""), "cannot read the input|not a TIFF|empty"),
    (lambda p: p.write_bytes(b"II*\x00garbage garbage"), "cannot read the input|TIFF"),
    (lambda p: p.mkdir(), "folder|directory|cannot read"),
])
def test_broken_input_files_end_in_one_line_and_exit_2(tmp_path, net, make, pattern, capsys):
    model = save_model(net, tmp_path / "m.pt")
    broken = tmp_path / "broken.tif"
    make(broken)
    status = main(["predict", str(model), str(broken), str(tmp_path / "o.zarr"), "-q"])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("seamfree predict: error: ")
    import re

    assert re.search(pattern, err), err


def test_malformed_yaml_and_a_file_as_report_folder_are_one_line(tmp_path, net, rng, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("training: [unclosed\n")
    assert main(["train", str(config)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    model = save_model(net, tmp_path / "m.pt")
    np.save(tmp_path / "image.npy", rng.normal(size=(96, 96)).astype(np.float32))
    (tmp_path / "report").write_text("a file, not a folder")
    status = main(["diagnose", str(model), str(tmp_path / "image.npy"), "--out", str(tmp_path / "report"),
                   "--core", "32", "--ted-batches", "1", "--patch-size", "32"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err


def test_errors_are_described_in_one_line_with_the_right_status():
    import errno

    from seamfree.cli.main import describe_error

    message, status = describe_error(OSError(errno.ENOSPC, "No space left on device", "/data/out.zarr/0/c/1"))
    assert status == 2 and "no space left on the device while writing '/data/out.zarr/0/c/1'" in message
    message, status = describe_error(ZeroDivisionError("division by zero"))
    assert status == 1 and "unexpected ZeroDivisionError" in message and "--verbose" in message
    message, status = describe_error(ValueError("line one\nline two"))
    assert "\n" not in message


def test_resume_with_other_tiles_per_batch_is_refused_and_says_why(net, tmp_path, rng):
    image = rng.normal(size=(64, 64)).astype(np.float32)
    out = tmp_path / "pred.zarr"
    predict(net, image, out, config=PredictConfig(core=32, halo=0, allow_small_halo=True, tiles_per_batch=1))
    with pytest.raises(OutputExistsError, match=r"runtime \(runtime.tiles_per_batch 1 there, 2 now\)"):
        predict(net, image, out, config=PredictConfig(core=32, halo=0, allow_small_halo=True, tiles_per_batch=2))


def test_an_output_fingerprinted_before_runtime_was_recorded_still_resumes(net, tmp_path, rng):
    import json

    image = rng.normal(size=(64, 64)).astype(np.float32)
    out = tmp_path / "pred.zarr"
    config = PredictConfig(core=32, halo=0, allow_small_halo=True, tiles_per_batch=1)
    with pytest.raises(KeyboardInterrupt):
        predict(net, image, out, config=config, progress=_interrupt_after(1))
    stored = out.with_name(out.name + ".seamfree") / "fingerprint.json"
    older = json.loads(stored.read_text())
    del older["runtime"]  # as written by seamfree before the runtime was part of the fingerprint
    stored.write_text(json.dumps(older))
    predict(net, image, out, config=config)


def _interrupt_after(count):
    def progress(done):
        if done >= count:
            raise KeyboardInterrupt
    return progress


def test_an_output_written_with_markers_inside_the_store_still_resumes(net, tmp_path, rng):
    """Versions before 0.3 kept the done markers inside the zarr store: they are moved out, and the run resumes."""
    image = rng.normal(size=(64, 64)).astype(np.float32)
    out = tmp_path / "pred.zarr"
    config = PredictConfig(core=32, halo=0, allow_small_halo=True, tiles_per_batch=1)
    with pytest.raises(KeyboardInterrupt):
        predict(net, image, out, config=config, progress=_interrupt_after(2))
    (out.with_name(out.name + ".seamfree")).rename(out / ".seamfree")  # the old layout
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["seamfree"] = {"status": "incomplete"}  # and the old attributes
    computed = []
    predict(net, image, out, config=config, report=computed)
    assert computed[0].tiles_computed == computed[0].tiles_total - 2
    assert not (out / ".seamfree").exists()
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(out))["0"][:]), predict(net, image, config=config))


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--threshold", "nan", "--output-kind", "mask"], r"threshold must lie in \[0, 1\]"),
    (["--intensity-scale", "5"], "--intensity-scale was given alone"),
    (["--intensity-offset", "5"], "--intensity-offset was given alone"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "1", "--memory-limit", "lots"], "--memory-limit"),
    (["--scheduler", "notanaddress"], "must be an address like tcp://host:8786"),
])
def test_bad_options_are_one_line_and_exit_2(net, tmp_path, rng, argv, pattern, capsys):
    model = save_model(net, tmp_path / "m.pt")
    np.save(tmp_path / "image.npy", rng.normal(size=(64, 64)).astype(np.float32))
    status = main(["predict", str(model), str(tmp_path / "image.npy"), str(tmp_path / "o.zarr"), "-q", *argv])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    import re

    assert re.search(pattern, err), err
    assert not (tmp_path / "o.zarr").exists()


def test_an_empty_zarr_array_is_a_clear_error(net, tmp_path):
    empty = tmp_path / "empty.zarr"
    zarr.create_array(str(empty), shape=(0, 64), chunks=(1, 64), dtype="u1")
    with pytest.raises(Exception, match=r"is empty \(shape \(0, 64\)\)"):
        predict(net, empty, config=CONFIG)


def test_the_same_input_by_another_path_spelling_resumes(net, tmp_path, rng, monkeypatch):
    image = tmp_path / "image.npy"
    np.save(image, rng.normal(size=(64, 64)).astype(np.float32))
    out = tmp_path / "pred.zarr"
    monkeypatch.chdir(tmp_path)
    predict(net, "image.npy", out, config=CONFIG)  # relative
    predict(net, image, out, config=CONFIG)  # absolute: the same input, resumed (nothing to redo)
    (tmp_path / "link.npy").symlink_to(image)
    predict(net, tmp_path / "link.npy", out, config=CONFIG)  # through a link


def _plant(path: Path, marker: Path, how: str) -> Path:
    import pickle

    if how == "torch.save":
        torch.save({"model": _Payload(marker)}, path)
    elif how == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:  # a bioimage.io-looking package whose weights are the payload
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\nname: payload package\n"
                                         "weights:\n  torchscript:\n    source: weights.pt\n")
            archive.writestr("weights.pt", pickle.dumps(_Payload(marker)))
    return path


ENTRY_POINTS = {
    "predict": lambda m, d: ["predict", str(m), str(d / "image.npy"), str(d / "out.zarr"), "-q"],
    "predict --workers": lambda m, d: ["predict", str(m), str(d / "image.zarr"), str(d / "out.zarr"), "-q",
                                       "--workers", "1"],
    "diagnose": lambda m, d: ["diagnose", str(m), str(d / "image.npy"), "--out", str(d / "report")],
    "audit": lambda m, d: ["audit", str(m)],
    "convert": lambda m, d: ["convert", str(m), "--out", str(d / "converted.pt")],
    "recalibrate": lambda m, d: ["recalibrate", str(m), str(d / "image.npy"), "--out", str(d / "new.pt")],
    "export": lambda m, d: ["export", str(m), "--bioimageio", str(d / "package.zip")],
    "train": lambda m, d: ["train", "--out", str(d / "run"), "--set", f"model.checkpoint={m}", "--set",
                           "training.iterations=1", "-q"],
}


@pytest.mark.integration
@pytest.mark.parametrize("how", ["torch.save", "pickle", "package"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_no_entry_point_runs_a_planted_payload(tmp_path, rng, entry, how, capsys):
    """Every command that loads a model, with a payload in every format: refused in one line, nothing ran."""
    marker = tmp_path / "payload-ran"
    model = _plant(tmp_path / ("model.zip" if how == "package" else "model.pt"), marker, how)
    image = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(32, 32), dtype="u1")[:] = image
    code = main(ENTRY_POINTS[entry](model, tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_the_payload_is_real_it_runs_with_trust_code(tmp_path):
    """The control: with consent the same file does run its code (so the test above proves something)."""
    marker = tmp_path / "payload-ran"
    path = _plant(tmp_path / "model.pt", marker, "torch.save")
    with pytest.raises(CheckpointError):
        load_model(path, trust_code=True)  # it unpickles (running the payload) to a dict, not a module
    assert marker.exists()


def test_an_image_holding_a_pickle_never_runs_code(tmp_path, net, capsys):
    """A .npy of Python objects (which numpy could unpickle) is refused as an image, in one line."""
    marker = tmp_path / "payload-ran"
    np.save(tmp_path / "image.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    model = save_model(net, tmp_path / "m.pt")
    assert main(["predict", str(model), str(tmp_path / "image.npy"), str(tmp_path / "o.zarr"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pickle" in err.lower(), err
    assert not marker.exists()
