"""Plans at scale: chunk-aligned cores, tiles that do not grow with the volume, the engine's buffers counted in the
budget, few output files (sharded pyramid levels) and an integer-exact pyramid mean."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from seamfree.io.pyramid import downsample
from seamfree.tiling import PredictConfig, predict, suggest_tiling
from seamfree.tiling.memory import engine_bytes, forward_memory

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def pointwise():
    """A cheap model without halo (a 1×1×1 convolution), as TorchScript like a user's export."""
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch 2.13 deprecates making TorchScript; users' files are TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(torch.nn.Conv3d(1, 1, 1).eval())


def test_cores_are_multiples_of_the_input_chunks_and_do_not_grow_with_the_volume(pointwise):
    chunks = (64, 256, 256)
    plans = [suggest_tiling(pointwise, shape, chunks=chunks, timed=False, memory_budget=3 << 30)
             for shape in ((128, 1024, 1024), (256, 2048, 2048), (1024, 4096, 4096))]
    for plan in plans:
        assert all(c % k == 0 for c, k in zip(plan.core, chunks)), plan.core
        assert plan.compute_ratio == 1.0
    assert len({p.tile_shape for p in plans}) == 1  # the same tile at 8× and 64× the voxels: flat memory
    # deterministic: the same plan every time
    assert suggest_tiling(pointwise, (256, 2048, 2048), chunks=chunks, timed=False,
                          memory_budget=3 << 30) == plans[1]


def test_the_budget_counts_the_engines_buffers_not_only_the_forward(pointwise):
    budget = 64 << 20
    plan = suggest_tiling(pointwise, (256, 2048, 2048), chunks=(64, 256, 256), timed=False, memory_budget=budget)
    voxels = math.prod(plan.tile_shape)
    forward = forward_memory(pointwise, 1, (1, 1, 1)).bytes(voxels)
    assert plan.estimated_bytes == forward + engine_bytes(voxels, 1, 1) <= budget
    assert engine_bytes(voxels, 1, 1) > forward  # for a cheap model the engine's buffers are most of it


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
def test_the_integer_pyramid_mean_is_the_rounded_float_mean(dtype, rng):
    info = np.iinfo(dtype)
    for shape, lead in (((1, 7, 9), 1), ((2, 8, 8, 5), 1), ((1, 3, 3, 3), 1), ((3, 1, 6, 7), 2)):
        block = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        pad = [(0, 0)] * lead + [(0, s % 2) for s in block.shape[lead:]]
        values = np.pad(block.astype(np.float64), pad, mode="edge")
        split = list(values.shape[:lead])
        for s in values.shape[lead:]:
            split += [s // 2, 2]
        expected = np.rint(values.reshape(split).mean(axis=tuple(range(lead + 1, len(split), 2)))).astype(dtype)
        found = downsample(block, "mean", lead)
        assert found.dtype == dtype
        np.testing.assert_array_equal(found, expected)


def test_a_sharded_output_keeps_few_files_in_every_level(pointwise, tmp_path, rng):
    image = rng.integers(0, 64, (64, 512, 512), dtype=np.uint8)
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(32, 128, 128), dtype="u1")
    source[:] = image
    out = tmp_path / "out.zarr"
    predict(pointwise, str(tmp_path / "in.zarr"), str(out),
            config=PredictConfig(activation="sigmoid", output_kind="uint8", tile_timing=False))
    group = zarr.open_group(str(out), mode="r")
    levels = sorted(group.array_keys())
    assert len(levels) >= 2
    base_shards = group["0"].shards
    assert base_shards is not None
    for key in levels[1:]:
        assert group[key].shards is not None or group[key].chunks == group[key].shape  # sharded like level 0
    files = sum(1 for p in out.rglob("*") if p.is_file())
    assert files <= 2 * math.prod(-(-n // c) for n, c in zip(group["0"].shape, base_shards)) + 10
    assert not out.with_name(out.name + ".seamfree").exists()


def test_the_report_says_what_bounded_the_run(pointwise, tmp_path, rng, capsys):
    import json

    from seamfree.cli.main import main

    image = rng.integers(0, 64, (32, 128, 128), dtype=np.uint8)
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(32, 64, 64), dtype="u1")
    source[:] = image
    report: list = []
    predict(pointwise, str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), report=report,
            config=PredictConfig(activation="sigmoid", output_kind="uint8", tile_timing=False))
    done = report[0]
    stages = done.stages.to_dict()
    assert set(stages) == {"plan", "read", "forward", "write", "pyramid"}
    assert all(v >= 0 for v in stages.values()) and stages["forward"] > 0 and stages["write"] > 0
    assert sum(stages.values()) <= done.seconds * 1.05
    assert done.cpu_seconds > 0 and done.peak_rss_bytes > 10e6 and done.memory_budget > 0
    line = done.summary()
    assert "Mvoxel/s" in line and "CPU ns/voxel" in line and "peak" in line and "time: " in line
    assert done.to_dict()["bounded_by"] in stages
    model = tmp_path / "m.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates saving TorchScript; users' files are TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(pointwise, str(model))
    assert main(["predict", str(model), str(tmp_path / "in.zarr"), str(tmp_path / "cli.zarr"), "--activation",
                 "sigmoid", "--output-kind", "uint8", "--no-tile-timing", "-q", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bounded_by"] in stages and printed["voxels_per_second"] > 0 and printed["tiles_total"] >= 1


@pytest.mark.parametrize(("kind", "bound"), [("uint8", 0.5 / 255), ("uint16", 0.5 / 65535), ("float16", 2.5e-4)])
def test_compact_output_kinds_and_their_error_against_float32(kind, bound, tmp_path, rng):
    from seamfree.models import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, 2, depth=2, features=4, norm="batchrenorm").eval()
    image = rng.normal(size=(300, 280)).astype(np.float32)
    config = PredictConfig(core=64, tiles_per_batch=1)
    reference = predict(net, image, config=config)
    out = tmp_path / f"{kind}.zarr"
    predict(net, image, str(out), config=PredictConfig(core=64, tiles_per_batch=1, output_kind=kind))
    group = zarr.open_group(str(out), mode="r")
    stored = np.asarray(group["0"])
    assert stored.dtype == np.dtype(kind)
    scale = {"uint8": 255.0, "uint16": 65535.0}.get(kind, 1.0)
    assert np.abs(stored.astype(np.float64) / scale - reference).max() <= bound + 1e-7
    assert np.asarray(group["1"]).dtype == np.dtype(kind)  # the pyramid keeps the kind
