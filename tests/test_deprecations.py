"""Renamed public names keep working for one release, each with a DeprecationWarning naming the new one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.cli.parser import build_parser
from seamfree.diagnostics import DiagnoseConfig, diagnose
from seamfree.models import UNet, ViTSegmenter
from seamfree.tiling import PredictConfig


def test_predict_config_batch_size_is_tiles_per_batch():
    with pytest.warns(DeprecationWarning, match="use tiles_per_batch"):
        config = PredictConfig(batch_size=3)
    assert config.tiles_per_batch == 3 and config.batch_size is None
    assert PredictConfig(tiles_per_batch=3) == config


def test_diagnose_config_offset_is_grid_offset():
    with pytest.warns(DeprecationWarning, match="use grid_offset"):
        config = DiagnoseConfig(offset=8)
    assert config.grid_offset == 8


def test_tm_and_ted_fields_have_their_old_names(rng):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm="instance")
    d = diagnose(net, rng.normal(size=(96, 96)), config=DiagnoseConfig(core=32, patch_size=32, ted_batches=1))
    with pytest.warns(DeprecationWarning, match=r"TileMismatch.dice is deprecated.*\.tm_dice"):
        assert d.tile_mismatch.dice == d.tile_mismatch.tm_dice
    with pytest.warns(DeprecationWarning, match=r"TrainEvalDisparity.abs is deprecated.*\.ted_abs"):
        assert d.disparity.abs == d.disparity.ted_abs


def test_vit_patch_size_is_token_size():
    with pytest.warns(DeprecationWarning, match="use token_size"):
        net = ViTSegmenter(1, 1, img_size=32, patch_size=8, embed_dim=16, depth=2, heads=2)
    assert net.network_stride == (8, 8) and net.config["token_size"] == 8


def test_old_checkpoint_configs_of_the_vit_still_build():
    from seamfree.models import build_model

    net = build_model("vit", {"in_channels": 1, "out_channels": 1, "img_size": 32, "patch_size": 8,
                              "embed_dim": 16, "depth": 2, "heads": 2})
    assert net.config["token_size"] == 8


def test_old_module_paths_and_names_still_import():
    from seamfree.layers.batchrenorm import BatchRenormNd, _BatchRenorm
    from seamfree.tiling.allocator import tune_cpu_allocator
    from seamfree.tiling.normalize import BlockStatistics, SlabStatistics, iter_blocks, iter_slabs

    assert _BatchRenorm is BatchRenormNd and BlockStatistics is SlabStatistics and iter_blocks is iter_slabs
    assert callable(tune_cpu_allocator)


@pytest.mark.parametrize(("argv", "dest", "value", "new"), [
    (["predict", "m.pt", "in.npy", "out.zarr", "--batch-size", "2"], "tiles_per_batch", 2, "--tiles-per-batch"),
    (["predict", "m.pt", "in.npy", "out.zarr", "--offset", "10", "--scale", "5"], "intensity_offset", 10.0,
     "--intensity-offset"),
    (["diagnose", "m.pt", "in.npy", "--out", "r", "--offset", "16"], "grid_offset", 16, "--grid-offset"),
])
def test_old_cli_options_still_parse_and_say_their_new_name(argv, dest, value, new, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert f"use {new}" in capsys.readouterr().err


def test_new_cli_options_parse_silently(capsys):
    args = build_parser().parse_args(["predict", "m.pt", "in.npy", "out.zarr", "--tiles-per-batch", "4",
                                      "--intensity-offset", "1", "--intensity-scale", "2"])
    assert (args.tiles_per_batch, args.intensity_offset, args.intensity_scale) == (4, 1.0, 2.0)
    assert capsys.readouterr().err == ""
    assert np.isfinite(args.intensity_scale)


def test_deprecated_names_are_deleted_before_the_version_that_removes_them():
    """Every deprecation names the version that removes it; reaching that version with any left is a failure."""
    from seamfree._version import REMOVED_IN, __version__

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())

    source = Path(__file__).resolve().parents[1] / "src" / "seamfree"
    left = sorted(str(p.relative_to(source)) for p in source.rglob("*.py")
                  if "is deprecated" in p.read_text() or "Deprecated" in p.read_text())
    assert version(__version__) < version(REMOVED_IN), (
        f"seamfree {__version__} reached {REMOVED_IN}, the version that removes the deprecated names; delete them "
        f"(in {left}) and this check's REMOVED_IN")
    with pytest.warns(DeprecationWarning, match=rf"removed in seamfree {REMOVED_IN}"):
        PredictConfig(batch_size=2)
