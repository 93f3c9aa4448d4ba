"""The bad-input table: every case a user can reach ends in one line on stderr and exit status 2, with no
traceback, and no file the user had is changed. Add a row for every new case found."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.models import UNet, save_model

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the user's data before and after the call)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    torch.manual_seed(0)
    save_model(UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm").eval(), tmp_path / "m.pt")
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    return tmp_path


def _predict(tmp: Path, image: str, out: str = "o.zarr", *extra: str) -> list[str]:
    return ["predict", str(tmp / "m.pt"), str(tmp / image), str(tmp / out), "-q", *extra]


def _tiff_named_npy(tmp: Path) -> list[str]:
    tifffile.imwrite(tmp / "fake.npy", np.zeros((16, 16), np.uint8))
    return _predict(tmp, "fake.npy")


def _npy_named_tiff(tmp: Path) -> list[str]:
    np.save(tmp / "fake.npy", np.zeros((16, 16), np.uint8))
    (tmp / "fake.npy").rename(tmp / "fake.tif")
    return _predict(tmp, "fake.tif")


def _truncated_tiff(tmp: Path) -> list[str]:
    tifffile.imwrite(tmp / "cut.tif", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    data = (tmp / "cut.tif").read_bytes()
    (tmp / "cut.tif").write_bytes(data[: len(data) // 3])
    return _predict(tmp, "cut.tif")


def _corrupt_compressed_tiff(tmp: Path) -> list[str]:
    tifffile.imwrite(tmp / "z.tif", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
                     compression="zlib", tile=(32, 32))
    data = bytearray((tmp / "z.tif").read_bytes())
    data[400:900] = b"\xff" * 500  # inside the compressed tiles
    (tmp / "z.tif").write_bytes(bytes(data))
    return _predict(tmp, "z.tif")


def _corrupt_zarr_chunk(tmp: Path) -> list[str]:
    array = zarr.create_array(str(tmp / "in.zarr"), shape=(64, 64), chunks=(32, 32), dtype="u1")
    array[:] = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    chunk = next(p for p in (tmp / "in.zarr" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\x00not a chunk" * 8)
    return _predict(tmp, "in.zarr")


def _file_named_zarr_with_overwrite(tmp: Path) -> list[str]:
    (tmp / "notes.zarr").write_text("the user's notes, not an OME-Zarr")
    return _predict(tmp, "image.npy", "notes.zarr", "--overwrite")


def _recalibrate_wrong_channels(tmp: Path) -> list[str]:
    np.save(tmp / "rgb.npy", np.zeros((3, 64, 64), np.float32))
    return ["recalibrate", str(tmp / "m.pt"), str(tmp / "rgb.npy"), "--out", str(tmp / "new.pt"),
            "--patch-size", "32"]


def _train_resume_other_architecture(tmp: Path) -> list[str]:
    run = tmp / "run"
    args = ["train", "--out", str(run), "--iterations", "1", "-q", "--set", "training.patch_size=[32,32]",
            "--set", "data.synthetic_shape=[64,64]", "--set", "model.depth=1", "--set", "model.features=2"]
    assert main(args) == 0
    return [*args[:-2], "--set", "model.features=4", "--resume"]


def _study_page_onto_a_users_file(tmp: Path) -> list[str]:
    (tmp / "notes.md").write_text("# my notes\n")
    return ["study", "--out", str(tmp / "study"), "--results", str(tmp / "notes.md"), "--report-only"]


def _write(tmp: Path, name: str, text: str = "the user's file") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "empty TIFF": (lambda t: ((t / "e.tif").write_bytes(b""), _predict(t, "e.tif"))[1], "cannot read|empty|TIFF"),
    "garbage TIFF": (lambda t: ((t / "g.tif").write_bytes(b"II*\x00garbage"), _predict(t, "g.tif"))[1], "TIFF|read"),
    "truncated TIFF": (_truncated_tiff, "TIFF|read|truncated|cannot"),
    "corrupt compressed TIFF": (_corrupt_compressed_tiff, "TIFF|read|decod|corrupt|cannot"),
    "a folder named .tif": (lambda t: ((t / "d.tif").mkdir(), _predict(t, "d.tif"))[1], "folder|directory"),
    "a TIFF named .npy": (_tiff_named_npy, "npy|cannot read|format"),
    "a .npy named .tif": (_npy_named_tiff, "TIFF|cannot read|format"),
    "a corrupt zarr chunk in the input": (_corrupt_zarr_chunk, "chunk|zarr|decod|corrupt|cannot read"),
    "an output under /proc": (lambda t: ["predict", str(t / "m.pt"), str(t / "image.npy"), "/proc/seamfree.zarr",
                                         "-q"], "/proc"),
    "a user's file named .zarr with --overwrite": (_file_named_zarr_with_overwrite, "not.*seamfree|refus"),
    "a missing model": (lambda t: ["audit", str(t / "absent.pt")], "does not exist"),
    "a missing image": (lambda t: _predict(t, "absent.npy"), "does not exist|not found"),
    "train --device cuda on a CPU build": (lambda t: ["train", "--out", str(t / "run"), "--device", "cuda", "-q"],
                                           "CUDA"),
    "predict --device bogus": (lambda t: _predict(t, "image.npy", "o.zarr", "--device", "bogus"),
                               "not a device name"),
    "recalibrate on images of the wrong channel count": (_recalibrate_wrong_channels, "channel"),
    "train --resume after the architecture changed": (_train_resume_other_architecture, "resume|architecture|state"),
    "an unknown --output of a one-tensor model": (lambda t: _predict(t, "image.npy", "o.zarr", "--output", "2"),
                                                   "selects nothing"),
    "--in-channels the model does not take": (lambda t: _predict(t, "image.npy", "o.zarr", "--in-channels", "3"),
                                              "--in-channels|channel"),
    # found by a hostile sweep of 72 invocations (the argument errors printed argparse's usage block; the rest
    # exited 0 or with an unexpected error)
    "a malformed --core (argparse, one line)": (lambda t: _predict(t, "image.npy", "o.zarr", "--core", "abc"),
                                                 "--core.*abc.*--help"),
    "an unknown --ngff version": (lambda t: _predict(t, "image.npy", "o.zarr", "--ngff", "0.3"), "invalid choice"),
    "an unknown command": (lambda t: ["segmentate"], "invalid choice"),
    "a text file as the model": (lambda t: ["audit", str(_write(t, "text.pt", "hello"))],
                                 "neither a seamfree checkpoint nor TorchScript"),
    "--spatial-dims contradicting the model": (lambda t: _predict(t, "image.npy", "o.zarr", "--spatial-dims", "3"),
                                               "contradicts the model"),
    "--key for a .npy": (lambda t: _predict(t, "image.npy", "o.zarr", "--key", "raw"), "selects nothing"),
    "--series for a .npy": (lambda t: _predict(t, "image.npy", "o.zarr", "--series", "1"), "selects nothing"),
    "--overlap with crop stitching": (lambda t: _predict(t, "image.npy", "o.zarr", "--overlap", "8"),
                                      "--stitching blend"),
    "diagnose --patch-size 0": (lambda t: ["diagnose", str(t / "m.pt"), str(t / "image.npy"), "--out",
                                           str(t / "rep"), "--patch-size", "0"], "patch-size"),
    "convert onto the input model": (lambda t: ["convert", str(t / "m.pt"), "--out", str(t / "m.pt")],
                                     "input model itself"),
    "convert onto an existing file": (lambda t: ["convert", str(t / "m.pt"), "--out", str(_write(t, "c.pt"))],
                                      "already exists.*--overwrite"),
    "recalibrate onto an existing file": (lambda t: ["recalibrate", str(t / "m.pt"), str(t / "image.npy"), "--out",
                                                     str(_write(t, "r.pt")), "--patch-size", "32"],
                                          "already exists.*--overwrite"),
    "a study page onto a user's file": (_study_page_onto_a_users_file, "not a page seamfree wrote"),
    "a complex-valued image": (lambda t: (np.save(t / "c.npy", np.zeros((64, 64), np.complex64)),
                                          _predict(t, "c.npy"))[1], "dtype complex64"),
    "an output in a missing folder": (lambda t: _predict(t, "image.npy", "nowhere/o.zarr"), "does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_bad_input_is_one_line_and_exit_2(workspace, case, capsys):
    make, pattern = CASES[case]
    argv = make(workspace)
    capsys.readouterr()
    before = _files(workspace)
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own exit (the seamfree command exits with this status)
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2, f"{case}: exit {status}: {err}"
    assert len(err.splitlines()) == 1 and "Traceback" not in err and ": error: " in err, err
    assert re.search(pattern, err, re.IGNORECASE), f"{case}: {err}"
    after = _files(workspace)
    assert {k: v for k, v in after.items() if k in before} == before, f"{case} changed the user's files"


@pytest.mark.parametrize("command", ["train", "recalibrate", "predict"])
def test_a_read_only_output_folder_is_one_line_and_exit_2(workspace, read_only_folder, command, capsys):
    argv = {
        "train": ["train", "--out", str(read_only_folder / "run"), "--iterations", "1", "-q"],
        "recalibrate": ["recalibrate", str(workspace / "m.pt"), str(workspace / "image.npy"), "--out",
                        str(read_only_folder / "new.pt"), "--patch-size", "32"],
        "predict": _predict(workspace, "image.npy", str(read_only_folder / "o.zarr")),
    }[command]
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert re.search("read-only|not writable|permission", err, re.IGNORECASE), err
