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


def test_a_resume_uses_the_plan_recorded_in_the_output_whatever_the_memory_now(monkeypatch, tmp_path, caplog):
    """Interrupted on one machine, resumed on a smaller one: the default plan there differs, the recorded one
    is used, and the result is the uninterrupted one."""
    import seamfree.tiling.suggest as suggest

    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()
    image = np.random.default_rng(1).integers(0, 255, (900, 700), dtype=np.uint8)
    monkeypatch.setattr(suggest, "default_memory_budget", lambda device: 24 << 20)
    with open_image(image, spatial_dims=2) as source:
        first_plan = plan_prediction(net, source, PredictConfig()).grid
    reference = predict(net, image, config=PredictConfig())
    out = tmp_path / "out.zarr"
    calls = []

    def interrupt(done):
        calls.append(done)
        if len(calls) > 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(net, image, out, progress=interrupt)
    monkeypatch.setattr(suggest, "default_memory_budget", lambda device: 3 << 20)  # "another machine"
    with open_image(image, spatial_dims=2) as source:
        assert plan_prediction(net, source, PredictConfig()).grid.core != first_plan.core  # a fresh plan differs
    with caplog.at_level("INFO", logger="seamfree.tiling.plan"):
        predict(net, image, out)
    assert "resuming with the plan recorded in the output" in caplog.text
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(out), mode="r")["0"][...]), reference)


@pytest.mark.integration
def test_the_measured_peak_of_the_suggested_tile_stays_under_the_budget(tmp_path):
    """The memory model is measured (torch's allocation records); checked here by an independent measure, the
    kernel's peak resident memory of a fresh process running one forward on the suggested tile."""
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the peak resident memory is read from /proc (Linux)")
    script = tmp_path / "peak.py"
    script.write_text('''
import json, math, sys, torch
from seamfree.models import UNet
from seamfree.tiling.memory import activation_bytes_per_voxel
from seamfree.tiling.suggest import suggest_tiling
torch.manual_seed(0)
dims, budget, shape = int(sys.argv[1]), int(sys.argv[2]), tuple(int(s) for s in sys.argv[3].split(","))
net = UNet(dims, 1, 1, depth=4 if dims == 2 else 3, features=16 if dims == 2 else 8, norm="batchrenorm").eval()
suggestion = suggest_tiling(net, shape, memory_budget=budget)
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
x = torch.rand((1, 1, *suggestion.tile_shape))
peaks = []
for _ in range(3):
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS:")
    with torch.inference_mode():
        net(x)
    peaks.append(status("VmHWM:") - before)
upper = activation_bytes_per_voxel(net, 1, (16,) * dims if dims == 2 else (4,) * dims)
print(json.dumps({"tile": suggestion.tile_shape, "estimated": suggestion.estimated_bytes, "peak": peaks[-1],
                  "peaks": peaks, "upper_bound_tile_bytes": upper * math.prod(suggestion.tile_shape)}))
''')
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for dims, budget, shape in ((2, 256 << 20, "4096,4096"), (3, 1 << 30, "128,512,512")):
        done = subprocess.run([sys.executable, str(script), str(dims), str(budget), shape], capture_output=True,
                              text=True, timeout=300, check=True, env=env)
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert found["estimated"] <= budget, found
        # what the kernel saw, once the process is warm: the first forward of a process also allocates one-time
        # buffers (40-60 MB here: kernel code, thread pools), not part of any tile's cost
        assert found["peak"] <= budget, found
        assert found["upper_bound_tile_bytes"] > budget, found  # the old estimate would not have allowed this tile


def test_a_budget_no_tile_fits_is_said_and_the_plan_is_logged_in_one_line(caplog, tmp_path, capsys):
    from seamfree.cli.main import main
    from seamfree.models import save_model

    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm="batch").eval()
    image = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    with caplog.at_level("INFO", logger="seamfree.tiling.suggest"):
        out = predict(net, image, config=PredictConfig(memory_budget=1))
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("even the smallest tiles") and "--memory-budget" in m for m in said), said
    assert any(m.startswith("tiling: core") and "voxels computed" in m for m in said), said
    np.testing.assert_allclose(out, predict(net, image, config=PredictConfig(core=96)), atol=1e-6)  # exact
    np.save(tmp_path / "image.npy", image)
    model = save_model(net, tmp_path / "net.pt")
    assert main(["predict", str(model), str(tmp_path / "image.npy"), str(tmp_path / "o.zarr"), "--memory-budget",
                 "0.5", "-q", "--no-pyramid"]) == 0
    assert "tiles computed" in capsys.readouterr().out
