"""The README's Python example runs as written, in a fresh folder (what a new user pastes first)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def _example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the README lost its Python example"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    pytest.importorskip("zarr")
    pytest.importorskip("matplotlib")
    finished = subprocess.run([sys.executable, "-c", _example()], cwd=tmp_path, capture_output=True, text=True,
                              timeout=900, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "tiling can be exact" in finished.stdout and "seams" in finished.stdout
    assert (tmp_path / "prediction.ome.zarr" / "zarr.json").is_file() and (tmp_path / "report").is_dir()
