"""Training: configuration checks, learning on synthetic data, exact resume, recalibration."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.errors import ConfigError, DataError
from seamfree.models import load_model
from seamfree.training import load_config, train

# A small 2D U-Net on synthetic nuclei: learns in well under a minute on 2 CPU cores.
SMALL = {
    "data": {"synthetic_kind": "nuclei", "synthetic_shape": [192, 192], "synthetic_train": 3, "synthetic_val": 1,
             "synthetic_options": {"object_size": 6.0}},
    "model": {"depth": 2, "features": 8, "norm": "batchrenorm", "norm_options": {"momentum": 0.05}},
    "training": {"iterations": 200, "batch_size": 4, "patch_size": [64, 64], "learning_rate": 3e-3,
                 "validate_every": 100, "renorm_warmup": 0.25, "renorm_ramp": 0.25, "val_core": 96},
}


def _config(tmp_path, **sections):
    base = {key: dict(value) for key, value in SMALL.items()}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    base["output"] = str(tmp_path / "run")
    return load_config(base=base)


def test_small_unet_reaches_dice_0_9_on_held_out_synthetic_data(tmp_path):
    started = time.perf_counter()
    result = train(_config(tmp_path))
    elapsed = time.perf_counter() - started
    assert result.best_dice is not None and result.best_dice >= 0.9, result
    print(f"trained in {elapsed:.1f} s, validation Dice {result.best_dice:.3f}")
    model = load_model(result.best)
    assert model.seamfree_metadata["patch_size"] == [64, 64] and model.seamfree_metadata["batch_size"] == 4
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "log.csv").exists()
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 201 and rows[0].startswith("step,loss")


class Interrupt(Exception):
    pass


def test_resumed_training_ends_where_an_uninterrupted_run_ends(tmp_path):
    short = {"iterations": 30, "validate_every": 10, "batch_size": 2, "patch_size": [32, 32], "val_core": 64}
    reference = train(_config(tmp_path / "a", training=short))

    def stop_at_25(step, row):
        if step == 25:
            raise Interrupt

    config = _config(tmp_path / "b", training=short)
    with pytest.raises(Interrupt):
        train(config, on_step=stop_at_25)  # dies after the checkpoint of step 20
    resumed = train(config, resume=True)
    a, b = load_model(reference.last).state_dict(), load_model(resumed.last).state_dict()
    for key in a:  # same seed, restored generators and optimizer: identical up to float rounding
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert resumed.best_dice == pytest.approx(reference.best_dice, abs=1e-6)
    log = (tmp_path / "b" / "run" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 31))


def test_unknown_keys_and_norms_are_rejected_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown configuration key training\.iteration \(did you mean 'iterations'"):
        load_config(base={"training": {"iteration": 5}})
    with pytest.raises(ConfigError, match="did you mean 'batchrenorm'"):
        load_config(base={"model": {"norm": "batchrenom"}})
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(base={"training": {"iterations": "many"}})
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(overrides=["training.iterations"])
    assert load_config(overrides=["training.batch_size=2"]).training.batch_size == 2


def test_bad_configurations_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="larger than the image"):
        train(_config(tmp_path, training={"patch_size": [256, 256]}))
    with pytest.raises(ConfigError, match="not divisible by the network stride"):
        train(_config(tmp_path, training={"patch_size": [62, 64]}))
    with pytest.raises(DataError, match="empty"):
        train(_config(tmp_path, data={"synthetic_train": 0}))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  norm: instance\ntraining:\n  iterations: 7\n")
    config = load_config(path, ["training.iterations=9", "model.depth=2"])
    assert (config.model.norm, config.training.iterations, config.model.depth) == ("instance", 9, 2)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_recalibration_on_images_moves_running_statistics(rng):
    from seamfree.models import UNet
    from seamfree.training.recalibrate import recalibrate_on_images

    net = UNet(2, 1, 1, depth=2, features=4, norm="batch").eval()
    norms = {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in norms.items()}
    assert len(before) >= 4
    images = [rng.normal(5, 2, size=(96, 96)).astype(np.float32) for _ in range(2)]
    recalibrate_on_images(net, images, patch_size=32, batch_size=2, batches=3)
    assert not net.training
    for name, (mean, var) in before.items():  # every layer's statistics moved away from their initial 0 and 1
        assert not torch.equal(mean, norms[name].running_mean), name
        assert not torch.equal(var, norms[name].running_var), name


def test_recalibration_draws_patches_like_training_from_masks():
    """A sparse target (one 8x8 square in 128²): with masks and foreground fraction 1 every patch is centred on the
    square, as training centres its patches, and the first layer's running mean (the conv of the normalized
    input) sees it; patches drawn anywhere are almost all background."""
    from seamfree.training.recalibrate import recalibrate_on_images

    image = np.zeros((128, 128), np.float32)
    image[40:48, 80:88] = 100.0
    mask = image > 0

    def recalibrated(**options):
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1)).eval()
        torch.nn.init.ones_(net[0].weight)
        recalibrate_on_images(net, [image], patch_size=16, batch_size=4, batches=8, spatial_dims=2, in_channels=1,
                              **options)
        return float(net[1].running_mean)

    centred = recalibrated(masks=[mask], foreground_fraction=1.0)
    anywhere = recalibrated()
    half = recalibrated(masks=[mask], foreground_fraction=0.5)
    bright = 1.0  # the square after percentile normalization (p1 0, p99.8 100)
    assert centred == pytest.approx(64 / 256 * bright, rel=0.05)  # the whole square in every 16² patch
    assert anywhere < 0.05 < half < centred
    with pytest.raises(ConfigError, match="one mask per image"):
        recalibrate_on_images(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1)), [image],
                              patch_size=16, masks=[mask, mask], spatial_dims=2, in_channels=1)


def test_the_sampler_and_the_disparity_batches_share_the_foreground_policy(rng):
    """TED and recalibration draw patches with the training sampler's own rule: the share of patches holding
    foreground is at least the foreground fraction the sampler guarantees."""
    from seamfree.data.patches import foreground_points, patch_origin
    from seamfree.training.sampler import PatchSampler

    mask = np.zeros((1, 200, 200), np.float32)
    mask[0, 150:156, 20:26] = 1
    points = foreground_points(mask[0] > 0)
    draws = np.random.default_rng(3)
    origins = [patch_origin(draws, (200, 200), (32, 32), points, 0.5) for _ in range(400)]
    holding = np.mean([mask[0, y:y + 32, x:x + 32].any() for y, x in origins])
    assert 0.45 <= holding <= 0.6  # half centred on it, and the odd uniform patch that touches it
    sampler = PatchSampler([(np.zeros((1, 200, 200), np.float32), mask)], (32, 32), 400, foreground_fraction=0.5,
                           min_foreground=0.0, rng=np.random.default_rng(3))
    _, targets = sampler.batch()
    assert abs(float(np.mean(targets.reshape(400, -1).any(axis=1))) - holding) < 0.1


def test_fine_tuning_converts_and_freezes_and_the_cli_trains(tmp_path, capsys):
    from seamfree.cli.main import main
    from seamfree.models import UNet, save_model

    torch.manual_seed(0)
    start = save_model(UNet(2, 1, 1, depth=2, features=4, norm="batch"), tmp_path / "bn.pt")
    config = tmp_path / "fine.yaml"
    config.write_text(f"model:\n  checkpoint: {start}\n  convert_norm: batchrenorm\n  freeze_encoder: true\n"
                      "data:\n  synthetic_shape: [96, 96]\n  synthetic_train: 1\n  synthetic_val: 1\n"
                      "training:\n  batch_size: 2\n  patch_size: [32, 32]\n  validate_every: 5\n  val_core: 64\n")
    code = main(["train", str(config), "--iterations", "5", "--out", str(tmp_path / "ft"), "-q"])
    assert code == 0 and "best validation Dice" in capsys.readouterr().out
    tuned = load_model(tmp_path / "ft" / "last.pt")
    original = load_model(start)
    assert tuned.config["norm"] == "batchrenorm"
    # the converted layers ramp r_max/d_max over this fine-tuning (40 % of 5 steps), not the 4000-step default
    schedules = {(m.schedule.warmup_steps, m.schedule.ramp_steps) for m in tuned.modules() if hasattr(m, "schedule")}
    assert schedules == {(0, 2)}
    assert torch.equal(tuned.encoders[0][0].weight, original.encoders[0][0].weight)  # frozen
    assert not torch.equal(tuned.head.weight, original.head.weight)  # trained
    assert main(["train", str(config), "--set", "model.norm=batchrenom"]) == 2
    assert "did you mean 'batchrenorm'" in capsys.readouterr().err


def test_the_example_config_trains_on_your_own_files(tmp_path):
    """examples/train.yaml loads as shipped, and with its data.images/masks keys set it trains on a user's files."""
    tifffile = pytest.importorskip("tifffile")
    example = Path(__file__).parents[2] / "examples" / "train.yaml"
    assert load_config(example).data.source == "synthetic"
    rng = np.random.default_rng(0)
    files = []
    for k in range(2):
        image = rng.integers(0, 255, (96, 96), dtype=np.uint8)
        tifffile.imwrite(tmp_path / f"img{k}.tif", image)
        tifffile.imwrite(tmp_path / f"mask{k}.tif", (image > 128).astype(np.uint8))
        files.append((str(tmp_path / f"img{k}.tif"), str(tmp_path / f"mask{k}.tif")))
    config = load_config(example, [
        "data.source=files", f"data.images=[{files[0][0]}]", f"data.masks=[{files[0][1]}]",
        f"data.val_images=[{files[1][0]}]", f"data.val_masks=[{files[1][1]}]",
        "training.iterations=3", "training.patch_size=[64,64]", "training.batch_size=2",
        "training.validate_every=3", "model.depth=2", "model.features=4", f"output={tmp_path / 'run'}"])
    result = train(config)
    assert result.iterations == 3 and result.last.is_file() and result.final_dice is not None


def _warmups(tmp_path, caplog, iterations, momentum=None, warmup="auto"):
    from seamfree.layers import BatchRenormNd
    from seamfree.training.loop import build_training_model

    options = {} if momentum is None else {"momentum": momentum}
    caplog.clear()
    config = _config(tmp_path, model={"norm_options": options},
                     training={"iterations": iterations, "renorm_warmup": warmup})
    model = build_training_model(config)
    steps = {m.schedule.warmup_steps for m in model.modules() if isinstance(m, BatchRenormNd)}
    assert len(steps) == 1
    warned = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    return steps.pop(), warned


def test_the_batchrenorm_warm_up_is_tied_to_the_running_momentum_and_warns_only_when_shown_too_short(
        tmp_path, caplog):
    """renorm_warmup "auto" is 3/momentum steps (the running statistics' settling time, at most half the run),
    whatever the budget; a warm-up shorter than that is warned about with the share of the initial statistics
    left in the running ones, and a longer one is not (it used to warn under 200 steps, whatever the momentum)."""
    assert _warmups(tmp_path, caplog, 500, momentum=0.05) == (60, [])
    assert _warmups(tmp_path, caplog, 5000, momentum=0.05) == (60, [])
    assert _warmups(tmp_path, caplog, 2000) == (300, [])  # BatchRenorm's default momentum 0.01
    steps, warned = _warmups(tmp_path, caplog, 400)  # 3/0.01 = 300 > half the run
    assert steps == 200 and len(warned) == 1 and "momentum >= 0.015" in warned[0] and "13 %" in warned[0]
    assert _warmups(tmp_path, caplog, 500, momentum=0.05, warmup=0.3) == (150, [])  # by hand, long enough
    steps, warned = _warmups(tmp_path, caplog, 500, momentum=0.05, warmup=0.05)
    assert steps == 25 and len(warned) == 1 and "28 %" in warned[0] and "renorm_warmup: auto" in warned[0]
    with pytest.raises(ConfigError, match=r"renorm_warmup must be 'auto' or a number, got 'soon'"):
        _config(tmp_path, training={"renorm_warmup": "soon"})
    assert load_config(overrides=["training.renorm_warmup=auto"]).training.renorm_warmup == "auto"
