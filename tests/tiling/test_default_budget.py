"""The default plan depends on the machine, not on the moment: the CPU budget comes from the total memory, so
calls made while the free memory changes choose the same grid, and a default-settings run resumes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from seamfree.io.readers import open_image
from seamfree.models import UNet
from seamfree.tiling import PredictConfig, predict
from seamfree.tiling.plan import plan_prediction
from seamfree.tiling.suggest import default_memory_budget, total_memory

zarr = pytest.importorskip("zarr")


@pytest.fixture
def changing_free_memory(monkeypatch):
    """os.sysconf answering a different free memory (SC_AVPHYS_PAGES) at every call, as the page cache does."""
    real = os.sysconf
    free = iter([1 << 18, 1 << 20, 1 << 16, 1 << 19] * 100)

    def sysconf(name):
        return next(free) if name == "SC_AVPHYS_PAGES" else real(name)

    monkeypatch.setattr(os, "sysconf", sysconf)


def test_the_cpu_budget_is_the_same_at_every_call(changing_free_memory):
    budgets = {default_memory_budget("cpu") for _ in range(5)}
    assert len(budgets) == 1
    assert budgets == {min(4 << 30, total_memory() // 8)}
    assert 0 < total_memory() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_default_plans_agree_and_a_default_run_resumes(changing_free_memory, tmp_path):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    image = np.random.default_rng(0).integers(0, 255, (700, 600), dtype=np.uint8)
    with open_image(image, spatial_dims=2) as source:
        grids = {plan_prediction(net, source, PredictConfig()).grid for _ in range(3)}
    assert len(grids) == 1
    out = tmp_path / "out.zarr"

    def interrupt(done):
        raise KeyboardInterrupt  # after the first tile

    config = PredictConfig(tiles_per_batch=1)  # default core, halo and budget
    with pytest.raises(KeyboardInterrupt):
        predict(net, image, out, config=config, progress=interrupt)
    predict(net, image, out, config=config)  # the free memory changed since: the same plan, so it resumes
    stored = np.asarray(zarr.open_group(str(out), mode="r")["0"][...])
    np.testing.assert_allclose(stored, predict(net, image, config=PredictConfig(core=256)), atol=1e-6)
