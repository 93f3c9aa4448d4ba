"""The first line of a long command appears before torch is even imported: the user sees that it started."""

from __future__ import annotations

import subprocess
import sys

import torch

from seamfree.models import UNet, save_model


def test_the_first_line_names_the_command_and_what_comes_first(tmp_path):
    torch.manual_seed(0)
    model = save_model(UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm").eval(), tmp_path / "m.pt")
    # -X importtime logs every import to stderr as it happens: the first line must precede torch's
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "seamfree.cli.main", "audit", str(model)],
                          capture_output=True, text=True, timeout=300, check=True)
    lines = done.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("seamfree audit"))
    torch_import = next(i for i, line in enumerate(lines)  # the first module of torch's to be imported
                        if line.startswith("import time:") and line.split("|")[-1].strip().startswith("torch"))
    assert first < torch_import, lines[first]
    assert "loading the model" in lines[first] and str(model) in lines[first]
    quiet = subprocess.run([sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(tmp_path / "x.npy"),
                            str(tmp_path / "out.zarr"), "-q"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and "seamfree predict" in quiet.stderr  # the error line ...
    assert "loading the model" not in quiet.stderr  # ... but -q: no informational lines
