"""Real file systems for the fault tests: small and read-only tmpfs mounts (ENOSPC and EROFS from the kernel)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``folder`` for the duration of the block (needs root)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs ({options}) needs root: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs: a real full disk (ENOSPC from the kernel), not a mock."""
    with tmpfs(tmp_path / "disk", "size=1536k") as mount:
        yield mount


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only file system (root ignores permission bits, not a read-only mount)."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        yield mount
