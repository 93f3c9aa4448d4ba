"""Throughput-aware tiling: among the plans that fit the memory budget, a few candidate tiles are timed once per
architecture and device, the timings are kept, and the plan predicted fastest wins by a clear margin only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seamfree.io.readers import open_image
from seamfree.models import UNet
from seamfree.tiling import PredictConfig, plan_prediction, predict, suggest_tiling, throughput
from seamfree.tiling.throughput import MIN_TIMED_VOXELS, SLACK, TileTiming

SHAPE = (1024, 1024)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm").eval()


@pytest.fixture
def fresh_timings(monkeypatch, tmp_path):
    """An empty timing cache, in this process and on disk."""
    monkeypatch.setattr(throughput, "_CACHE", {})
    monkeypatch.setenv("SEAMFREE_CACHE", str(tmp_path / "cache"))


def clock(monkeypatch, seconds_per_voxel, first=1.0):
    """Replace the stopwatch of a forward by ``seconds_per_voxel(voxels)`` per voxel, the first forward of a shape
    ``first`` times that; return the shapes timed."""
    timed: list[tuple[int, ...]] = []

    def time_forward(model, shape, device, amp):
        timed.append(tuple(shape[2:]))
        voxels = math.prod(shape[2:])
        steady = voxels * seconds_per_voxel(voxels)
        return TileTiming(first * steady, steady)

    monkeypatch.setattr(throughput, "_time_forward", time_forward)
    return timed


def test_a_plan_of_smaller_tiles_wins_when_its_forwards_are_clearly_faster(net, fresh_timings, monkeypatch):
    # large tiles three times slower per voxel than tiles of at most 320 000 voxels (560²)
    timed = clock(monkeypatch, lambda voxels: 3e-8 if voxels > 320_000 else 1e-8)
    budget = 1 << 30
    suggestion = suggest_tiling(net, SHAPE, memory_budget=budget)
    one_tile = suggest_tiling(net, SHAPE, memory_budget=budget, timed=False)
    assert one_tile.tile_shape == SHAPE and one_tile.compute_ratio == 1.0  # the fewest voxels
    assert SHAPE in timed and len(timed) >= 3, timed
    assert timed == sorted(timed, key=math.prod), "the smallest tile is timed first"
    assert math.prod(suggestion.tile_shape) <= 320_000
    assert 1.0 < suggestion.compute_ratio <= SLACK
    assert suggestion.estimated_bytes <= budget
    one_tile_seconds = 3e-8 * math.prod(SHAPE)
    assert suggestion.expected_seconds is not None and suggestion.expected_seconds < 0.9 * one_tile_seconds


def test_timings_are_kept_so_later_calls_time_nothing_and_agree(net, fresh_timings, monkeypatch):
    timed = clock(monkeypatch, lambda voxels: 3e-8 if voxels > 320_000 else 1e-8)
    first = suggest_tiling(net, SHAPE, memory_budget=1 << 30)
    count = len(timed)
    assert count > 0
    again = [suggest_tiling(net, SHAPE, memory_budget=1 << 30) for _ in range(2)]
    monkeypatch.setattr(throughput, "_CACHE", {})  # another process: the timings come from disk
    again.append(suggest_tiling(net, SHAPE, memory_budget=1 << 30))
    assert len(timed) == count, "no forward was timed again"
    assert {s.core for s in [first, *again]} == {first.core}


def test_the_first_forward_of_a_large_tile_counts_apart(net, fresh_timings, monkeypatch):
    # the same speed per voxel at every size, but a tile's first forward in a process costs 3× (memory faulted in):
    # one large tile pays that once over the whole image, 16 small ones over a sixteenth
    clock(monkeypatch, lambda voxels: 1e-8, first=3.0)
    suggestion = suggest_tiling(net, SHAPE, memory_budget=1 << 30)
    assert suggestion.tile_shape != SHAPE and suggestion.compute_ratio <= SLACK
    assert suggestion.expected_seconds is not None and suggestion.expected_seconds < 0.9 * 3e-8 * math.prod(SHAPE)


def test_a_small_predicted_gain_keeps_the_fewest_voxels(net, fresh_timings, monkeypatch):
    clock(monkeypatch, lambda voxels: 1.05e-8 if voxels > 320_000 else 1e-8)  # 5 % faster per voxel: too little
    suggestion = suggest_tiling(net, SHAPE, memory_budget=1 << 30)
    assert suggestion.tile_shape == SHAPE and suggestion.compute_ratio == 1.0


def test_small_tiles_and_tile_timing_off_time_nothing(net, fresh_timings, monkeypatch):
    timed = clock(monkeypatch, lambda voxels: 1e-8)
    assert math.prod((700, 600)) < MIN_TIMED_VOXELS
    suggest_tiling(net, (700, 600), memory_budget=1 << 30)
    with open_image(np.zeros(SHAPE, np.float32), spatial_dims=2) as source:
        plan_prediction(net, source, PredictConfig(tile_timing=False, memory_budget=1 << 30))
    assert timed == []


def test_real_forwards_are_timed_and_the_plan_is_exact(net, fresh_timings):
    forwards = []
    handle = net.register_forward_pre_hook(lambda module, inputs: forwards.append(tuple(inputs[0].shape[2:])))
    image = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    with open_image(image, spatial_dims=2) as source:
        plan_prediction(net, source, PredictConfig(memory_budget=1 << 30))
        timed = [shape for shape in forwards if math.prod(shape) >= MIN_TIMED_VOXELS // 16]
        assert SHAPE in timed and timed.count(SHAPE) == 2, timed  # a first and a steady forward
        forwards.clear()
        plans = [plan_prediction(net, source, PredictConfig(memory_budget=1 << 30)) for _ in range(2)]
    handle.remove()
    assert SHAPE not in forwards, "the timings were kept"
    assert plans[0].grid == plans[1].grid
    np.testing.assert_allclose(predict(net, image, config=PredictConfig(memory_budget=1 << 30)),
                               predict(net, image, config=PredictConfig(core=SHAPE[0])), atol=1e-6)


def test_the_cli_accepts_no_tile_timing(tmp_path, net, fresh_timings, monkeypatch):
    from seamfree.cli.main import main
    from seamfree.models import save_model

    timed = clock(monkeypatch, lambda voxels: 1e-8)
    np.save(tmp_path / "image.npy", np.zeros(SHAPE, np.float32))
    model = save_model(net, tmp_path / "net.pt")
    assert main(["predict", str(model), str(tmp_path / "image.npy"), str(tmp_path / "o.zarr"), "--no-tile-timing",
                 "-q", "--no-pyramid"]) == 0
    assert timed == []
