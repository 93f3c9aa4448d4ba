from __future__ import annotations

import numpy as np
import pytest

from seamfree.cli.main import main
from seamfree.errors import ConfigError
from seamfree.models import UNet, load_model, save_model
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")


@pytest.fixture
def checkpoint(tmp_path):
    return save_model(UNet(2, 1, 1, depth=2, features=4, norm="batch"), tmp_path / "net.pt")


def test_predict_command_writes_the_same_as_the_library(checkpoint, tmp_path, rng, capsys):
    image = rng.integers(0, 255, (70, 90), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / "pred.zarr"
    assert main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(out), "--core", "32", "-q"]) == 0
    assert "tiles computed" in capsys.readouterr().out
    expected = predict(load_model(checkpoint), image, config=PredictConfig(core=32))
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"))[:], expected)


def test_bad_input_exits_with_2_and_one_line(checkpoint, tmp_path, rng, capsys):
    np.save(tmp_path / "image.npy", rng.random((2, 40, 40)))
    code = main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(tmp_path / "o.zarr"), "-q"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seamfree predict: error: the image has 2 channel(s)")
    assert "\n" not in err
    assert not (tmp_path / "o.zarr").exists()
    assert main(["audit", str(tmp_path / "nope.pt")]) == 2
    np.save(tmp_path / "gray.npy", rng.random((40, 40)))
    assert main(["predict", str(checkpoint), str(tmp_path / "gray.npy"), str(tmp_path / "x.zarr"),
                 "--core", "30", "--pin-core", "-q"]) == 2
    assert "not a multiple of the network stride" in capsys.readouterr().err


def test_audit_and_convert_commands(checkpoint, tmp_path, capsys):
    assert main(["audit", str(checkpoint)]) == 0
    assert "verdict: tile-independent" in capsys.readouterr().out
    converted = tmp_path / "renorm.pt"
    assert main(["convert", str(checkpoint), "--out", str(converted)]) == 0
    assert load_model(converted).config["norm"] == "batchrenorm"


def test_argument_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--core", "abc"])
    assert exit_info.value.code == 2


def test_a_closed_pipe_is_not_an_error(checkpoint):
    """`seamfree audit m.pt | head -0`: the reader is gone before seamfree writes; no traceback, exit 0."""
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-m", "seamfree.cli.main", "audit", str(checkpoint)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        run.stdout.close()  # nobody reads: every write gets EPIPE
        err = run.stderr.read().decode()
        code = run.wait()
    assert code == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_missing_input_or_a_bad_core_fails_before_the_model_is_even_loaded(tmp_path, rng, capsys):
    # the model path is garbage too: the input and --core are checked first, in a second, not after the model's
    # description (receptive field, tile probe), which takes a minute on a large network
    np.save(tmp_path / "image.npy", rng.random((40, 40)))
    assert main(["predict", str(tmp_path / "no-model.pt"), str(tmp_path / "missing.tif"), str(tmp_path / "o.zarr"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "input" in err and "missing.tif" in err and "does not exist" in err and "check the path" in err
    assert main(["predict", str(tmp_path / "no-model.pt"), str(tmp_path / "image.npy"), str(tmp_path / "o.zarr"),
                 "--core", "-5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "core must be positive" in err and "-5" in err
    with pytest.raises(ConfigError, match="halo must be non-negative"):
        PredictConfig(halo=(-1, 4))
    assert not (tmp_path / "o.zarr").exists()
