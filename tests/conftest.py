"""Shared fixtures: seeded RNGs, the local dataset folder, small threads for a 2-core machine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# SEAMFREE_TEST_THREADS=1 keeps the suite usable next to another torch job on a small machine.
torch.set_num_threads(int(os.environ.get("SEAMFREE_TEST_THREADS", min(2, os.cpu_count() or 1))))

DATA_DIR = Path(os.environ.get("SEAMFREE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Receptive fields measured by the tests are kept in a folder of this session only (inherited by the CLI and dask
# processes the tests start): every run starts cold and nothing is left in the user's ~/.cache.
if "SEAMFREE_TEST_KEEP_CACHE" not in os.environ:
    import tempfile

    os.environ["SEAMFREE_CACHE"] = tempfile.mkdtemp(prefix="seamfree-test-cache-")
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="seamfree-test-config-")  # the cache's signing key


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real datasets not found at {DATA_DIR}; set SEAMFREE_DATA=../shared/data")
    return DATA_DIR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An integration test is also slow: the inner loop ``-m "not slow"`` leaves both out, CI runs both."""
    for item in items:
        if item.get_closest_marker("integration") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
