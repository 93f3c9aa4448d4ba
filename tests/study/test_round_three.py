"""The study's round-three designs: TED by training × measurement batch with BatchRenorm's clip rate, the blending
arm, the equal-samples arm, one tiling at every transfer stage, models cached apart from their measurement (and
pruned), TF32 off, and the estimate printed before a study starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from seamfree.cli.main import main
from seamfree.layers.batchrenorm import counting_clips
from seamfree.models import UNet
from seamfree.models.checkpoint import load_model, save_model
from seamfree.study import load_study_config, plan_runs, run_study
from seamfree.study.arms import measurement_batch_disparity, stitching_arm
from seamfree.study.estimate import estimate_study
from seamfree.study.runner import model_directories


def _trained_like(norm: str, tmp_path, batch: int = 2) -> torch.nn.Module:
    """A small U-Net whose running statistics are those of training-like batches (a few train-mode forwards)."""
    torch.manual_seed(0)
    model = UNet(2, 1, 1, depth=2, features=4, norm=norm,
                 norm_options={"warmup_steps": 0, "ramp_steps": 0} if norm == "batchrenorm" else {})
    model.train()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(30):
            model(torch.from_numpy(rng.random((batch, 1, 32, 32), dtype=np.float32)))
    path = save_model(model, tmp_path / f"{norm}.pt", metadata={"patch_size": [32, 32], "batch_size": batch})
    return load_model(path)


def _image() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.random((1, 192, 192), dtype=np.float32)
    return image, (image > 0.6).astype(np.uint8)


@pytest.mark.integration  # ~25 s of CPU: outside the inner loop
def test_ted_is_measured_at_each_batch_size_with_the_renorm_clip_rate(tmp_path):
    image, mask = _image()
    batchnorm = measurement_batch_disparity(_trained_like("batch", tmp_path), image, mask, batch_sizes=(1, 4))
    assert set(batchnorm) >= {"ted_dice_m1", "ted_dice_m4", "clip_rate"} and batchnorm["clip_rate"] is None
    assert batchnorm["ted_dice_m1"] > batchnorm["ted_dice_m4"] >= 0  # one patch's statistics are the noisiest
    renorm = measurement_batch_disparity(_trained_like("batchrenorm", tmp_path), image, mask, batch_sizes=(1, 4))
    # r and d within their bounds leave train mode equal to eval mode: TED 0 where nothing is clipped
    for size in (1, 4):
        clip = renorm[f"clip_rate_m{size}"]
        assert clip is not None and 0 <= clip <= 1
        if clip == 0:
            assert renorm[f"ted_dice_m{size}"] == pytest.approx(0, abs=1e-6)
    assert renorm["clip_rate"] == renorm["clip_rate_m4"] if "clip_rate_m2" not in renorm else True
    # the counter sees every layer of every copy inside the block, and nothing outside it
    model = _trained_like("batchrenorm", tmp_path)
    model.train()
    with counting_clips() as count:
        model(torch.full((2, 1, 32, 32), 50.0))  # constant: no spread, r below its bound in most channels
    assert count.statistics == 2 * 4 * 5 + 2 * 4 * 5 and count.rate() > 0.5
    seen = count.statistics
    model(torch.full((2, 1, 32, 32), 50.0))
    assert count.statistics == seen  # nothing counted outside the block


@pytest.mark.integration  # ~35 s of CPU: outside the inner loop
def test_blending_hides_seams_that_crop_stitching_shows_and_changes_nothing_for_exact_models(tmp_path):
    image, mask = _image()
    exact = stitching_arm(_trained_like("batch", tmp_path), image, mask, core=(64, 64), overlaps=(0.25, 0.5))
    assert exact["shift_abs_crop"] == 0.0
    assert exact["shift_abs_blend25"] < 1e-6 and exact["shift_abs_blend50"] < 1e-6
    assert exact["dice_blend25"] == pytest.approx(exact["dice_crop"])
    tiled = stitching_arm(_trained_like("instance", tmp_path), image, mask, core=(64, 64), overlaps=(0.25, 0.5))
    assert tiled["shift_abs_crop"] > 1e-3  # the tile decides the prediction
    assert tiled["shift_abs_blend50"] < tiled["shift_abs_crop"]  # blending averages the tiles, it hides
    assert tiled["shift_abs_blend50"] > 1e-4  # ... but never removes the dependence on where the tiles lie
    assert stitching_arm(_trained_like("instance", tmp_path), image[:, :100, :100], mask[:100, :100],
                         core=(64, 64)) == {}  # too small to compare away from the borders


def test_the_standard_profile_plans_the_arms_and_one_tiling_at_every_transfer_stage():
    runs = plan_runs(load_study_config(profile="standard"))
    grid = {r.name: r for r in runs if r.kind == "grid"}
    assert grid["grid/isbi2012/unet-batch-b1-s0"].evaluation["measurement_batches"] == [1, 8]
    assert grid["grid/isbi2012/unet-instance-b8-s0"].evaluation["blend_overlaps"] == [0.25, 0.5]
    assert "measurement_batches" not in grid["grid/isbi2012/unet-instance-b8-s0"].evaluation
    assert "blend_overlaps" not in grid["grid/isbi2012/unet-batchrenorm-b8-s0"].evaluation
    # equal samples: batch 1 for 8× the recipe's iterations, at every learning rate of the sweep, every seed
    arm = [r for r in runs if r.kind == "equal-samples"]
    assert {r.train["training"]["iterations"] for r in arm if r.labels["batch_size"] == 1} == {8 * 500}
    assert {r.train["training"]["iterations"] for r in arm if r.labels["batch_size"] == 8} == {500}
    assert {r.labels["learning_rate"] for r in arm} == {1e-3, 2e-3}
    assert {r.labels["seed"] for r in arm} == {0, 1, 2, 3, 4}
    assert {r.labels["norm"] for r in arm} == {"batch", "batchrenorm"}
    assert "equal-samples/isbi2012/unet-batchrenorm-b1x8-lr0.001-s2" in {r.name for r in arm}
    # ViT rows with every seed of the grid
    assert {r.labels["seed"] for r in runs if r.kind == "vit"} == {0, 1, 2}
    # transfer: the zero-shot diagnosis and every adapted model are measured on the same tiling
    transfer = [r for r in runs if r.name.startswith("transfer/isbi2012") and r.kind != "transfer-source"]
    tilings = {(r.kind, str(r.evaluation["core"]), str(r.evaluation["halo"])) for r in transfer}
    assert {(core, halo) for _, core, halo in tilings} == {("256", "auto")}
    assert {r.kind for r in transfer} >= {"zero-shot", "finetune", "recalibrate", "scratch"}
    # InstanceNorm's adapted models also at the small core and the whole image: its tile size is a hyper-parameter
    tuned = [r for r in transfer if r.kind == "finetune"]
    assert all(r.evaluation["tile_sizes"] == (r.labels["norm"] == "instance") for r in tuned)


TINY = {
    "grid": {"datasets": [{"name": "synthetic"}], "norms": ["batch", "batchrenorm"], "batch_sizes": [2]},
    "training": {"iterations": 4, "patch_size": [64, 64], "features": 4, "depth": 2, "checkpoint_every": 2},
    "evaluation": {"test_images": 1, "core": 192, "small_core": 192, "ted_batches": 1, "measurement_batches": [],
                   "blend_overlaps": []},
    "samples": {"enabled": True, "datasets": [{"name": "synthetic"}], "norms": ["batchrenorm"], "reference_batch": 2},
    "vit": {"dataset": None}, "volume": {"enabled": False}, "transfer": {"enabled": False},
}


@pytest.mark.integration
def test_models_are_cached_apart_from_their_measurement_and_pruned(tmp_path, capsys):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "study"
    assert main(["study", str(config_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "estimate: 3 run(s) to do on cpu: about" in printed and "training 3 model(s), timed here" in printed
    config = load_study_config(config_path)
    models = model_directories(config, out)
    train = models["grid/synthetic/unet-batch-b2-s0"] / "train"
    # once trained, the model is kept (model.pt, best.pt) and the resumable state is pruned
    assert sorted(p.name for p in train.glob("*.pt")) == ["best.pt"]
    assert (train.parent / "model.pt").exists()
    # a new measurement of the same models trains nothing again
    changed = load_study_config(config_path, overrides=["evaluation.measurement_batches=[1, 2]"])
    stamp = (train.parent / "model.pt").stat().st_mtime_ns
    result = run_study(changed, out)
    assert len(result.ran) == 3 and (train.parent / "model.pt").stat().st_mtime_ns == stamp
    rows = {r["name"]: r for r in result.rows}
    assert rows["grid/synthetic/unet-batchrenorm-b2-s0"]["clip_rate"] is not None
    assert rows["grid/synthetic/unet-batch-b2-s0"]["ted_dice_m1"] is not None
    assert rows["equal-samples/synthetic/unet-batchrenorm-b1x2-lr0.003-s0"]["learning_rate"] == 0.003
    # the estimate alone runs nothing
    assert main(["study", str(config_path), "--out", str(tmp_path / "other"), "--estimate"]) == 0
    assert "estimate:" in capsys.readouterr().out and not (tmp_path / "other" / "study.csv").exists()


def test_the_estimate_times_training_and_counts_two_copies_of_every_model():
    config = load_study_config(overrides=["grid.norms=[batch]", "grid.batch_sizes=[2]", "training.iterations=10",
                                          "vit.dataset=null", "volume.enabled=false", "transfer.enabled=false",
                                          "grid.datasets=[{name: synthetic}]"])
    runs = plan_runs(config)
    estimate = estimate_study(config, runs, image_voxels={"synthetic": 384 * 384})
    assert estimate.trainings == len(runs) == 1 and estimate.train_seconds > 0 and estimate.eval_seconds > 0
    parameters = sum(p.numel() for p in UNet(2, 1, 1, depth=config.training.depth, features=4,
                                             norm="batch").parameters())
    assert estimate.model_bytes >= 2 * 4 * parameters
    assert "1 run(s) to do on cpu" in estimate.describe()


def test_the_study_turns_tf32_off():
    from seamfree.study.runner import exact_float32

    torch.backends.cuda.matmul.allow_tf32 = True
    exact_float32()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
