"""The engine's seams: eval mode, run_tiles with either sink, resume through the sink, the plan's fingerprint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seamfree.errors import ConfigError
from seamfree.io import open_image
from seamfree.io.writers import ArrayOutput
from seamfree.models import UNet
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import (
    BlendSink,
    CropSink,
    PredictConfig,
    RuntimeSpec,
    eval_mode,
    forward_batch,
    plan_prediction,
    predict,
    run_tiles,
    sink_for,
)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return randomize_norm_statistics(UNet(2, 1, 2, depth=2, features=4, norm="batch"))


def test_eval_mode_restores_the_mode_even_after_an_error(net):
    net.train()
    seen = []

    def fails() -> None:
        with eval_mode(net):
            seen.append(net.training)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert seen == [False] and net.training and all(m.training for m in net.modules())


def test_forward_batch_needs_a_resolved_activation(net):
    with pytest.raises(ConfigError, match="resolved activation"):
        forward_batch(net, np.zeros((1, 1, 16, 16), np.float32), RuntimeSpec(activation="auto"))


@pytest.mark.parametrize("stitching", ["crop", "blend"])
def test_run_tiles_resumes_through_its_sink_and_reports_progress(net, stitching, rng):
    image = rng.normal(size=(60, 72)).astype(np.float32)
    config = PredictConfig(core=16, stitching=stitching, tiles_per_batch=1)  # bitwise: same batches as one run
    reference = predict(net, image, config=config)
    source = open_image(image, spatial_dims=2)
    plan = plan_prediction(net, source, config)
    tiles = list(plan.grid.tiles())
    out = np.zeros(plan.output_shape, np.float32)
    target = ArrayOutput(out)
    calls: list[tuple[int, int]] = []
    # the first half of the tiles, as if the run had been interrupted
    first = run_tiles(net, plan, source, tiles[: len(tiles) // 2], sink_for(plan, target))
    assert first == len(tiles) // 2
    sink = sink_for(plan, target)  # a new sink on the same target: what a rerun builds
    assert isinstance(sink, BlendSink if stitching == "blend" else CropSink)
    pending = sink.pending(tiles)
    assert 0 < len(pending) < len(tiles) if stitching == "crop" else len(pending) < len(tiles)
    computed = run_tiles(net, plan, source, tiles, sink, progress=lambda done, total: calls.append((done, total)))
    assert computed == len(pending)
    assert calls[0] == (len(tiles) - len(pending), len(tiles)) and calls[-1] == (len(tiles), len(tiles))
    np.testing.assert_array_equal(out, reference)


def test_the_fingerprint_keeps_the_settings_of_earlier_outputs(net, rng):
    """Outputs written before the engine split resume: the fingerprinted settings have the same names."""
    source = open_image(rng.normal(size=(40, 40)).astype(np.float32), spatial_dims=2)
    plan = plan_prediction(net, source, PredictConfig(core=16, tiles_per_batch=3, device="cpu"))
    assert set(plan.fingerprint["settings"]) == {
        "core", "halo", "stitching", "overlap", "blend_window", "tta", "activation", "output_kind", "threshold",
        "pinned_core", "allow_small_halo", "grid_offset"}
    again = plan_prediction(net, source, PredictConfig(core=16, tiles_per_batch=1))
    assert {k: v for k, v in again.fingerprint.items() if k != "runtime"} == {
        k: v for k, v in plan.fingerprint.items() if k != "runtime"}
    assert again.fingerprint["runtime"] == {"tiles_per_batch": 1, "amp": False}  # resumed only with the same


def test_the_output_channel_probe_is_small_and_checks_same_size_output(rng):
    from torch import nn

    shapes: list[tuple[int, ...]] = []

    class Recorder(nn.Module):
        spatial_dims = 2
        network_stride = (1, 1)

        def forward(self, x):
            shapes.append(tuple(x.shape))
            return torch.cat([x, x], dim=1)

    source = open_image(rng.normal(size=(300, 300)).astype(np.float32), spatial_dims=2)
    plan = plan_prediction(Recorder(), source, PredictConfig(core=256, halo=0, allow_small_halo=True,
                                                            tiles_per_batch=1))
    # describing the model (geometry, receptive field, tile probe) runs only inputs far smaller than one tile
    assert plan.out_channels == 2 and shapes and max(math.prod(s) for s in shapes) <= 64 * 64, shapes

    class Shrinks(nn.Module):
        spatial_dims = 2
        network_stride = (1, 1)

        def forward(self, x):
            return x[..., 1:, 1:]

    from seamfree.errors import ShapeError

    with pytest.raises(ShapeError, match="differs from its input"):
        plan_prediction(Shrinks(), source, PredictConfig(core=256, halo=0, allow_small_halo=True, tiles_per_batch=1))


def test_channels_last_and_compiled_forwards_stay_exact_and_are_part_of_the_resume_fingerprint(net, rng, tmp_path):
    """The GPU path's options run on the CPU too: a channels-last batch layout and ``torch.compile`` give the
    default prediction to float rounding, leave the caller's model untouched (compiled once, kept beside it, no
    state_dict entry), and an output written with one of them does not resume under another computation."""
    from seamfree.errors import SeamfreeError
    from seamfree.tiling.device import compiled

    image = rng.normal(size=(96, 80)).astype(np.float32)
    base = PredictConfig(core=32, tile_timing=False)
    reference = predict(net, image, config=base)
    keys = set(net.state_dict())
    layout = predict(net, image, config=PredictConfig(core=32, tile_timing=False, channels_last=True))
    assert np.abs(layout - reference).max() <= 1e-5
    fast = predict(net, image, config=PredictConfig(core=32, tile_timing=False, compile=True))
    assert np.abs(fast - reference).max() <= 1e-5
    assert compiled(net) is compiled(net) and set(net.state_dict()) == keys
    out = tmp_path / "pred.zarr"
    predict(net, image, out, config=PredictConfig(core=32, tile_timing=False, channels_last=True))
    with pytest.raises(SeamfreeError, match="refusing to resume"):
        predict(net, image, out, config=base)
    predict(net, image, out, config=PredictConfig(core=32, tile_timing=False, channels_last=True))  # resumes
