"""Seams without the model: the tile grid of a prediction found from the prediction alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from seamfree.cli.main import main
from seamfree.diagnostics.seam_grid import FALSE_ALARM_RATE, comb_statistic, find_seams
from seamfree.errors import ConfigError, ShapeError
from seamfree.study.seam_cases import CALIBRATION, VALIDATION, SeamCase, check_disjoint, clopper_pearson


def _planted(shape: tuple[int, ...], period: tuple[int, ...], offset: tuple[int, ...], amplitude: float,
             noise: float, seed: int) -> np.ndarray:
    """A smooth texture + a constant offset per tile (the step a tile-wise normalization leaves) + noise."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 5) * 5
    tile = np.zeros(shape, dtype=np.int64)
    for axis, (p, o) in enumerate(zip(period, offset)):
        index = (np.arange(shape[axis]) - o) // p + 1
        tile = tile * 1000 + index.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    _, inverse = np.unique(tile, return_inverse=True)
    offsets = rng.normal(0, amplitude, inverse.max() + 1)
    return (texture + offsets[inverse].reshape(shape) + rng.normal(0, noise, shape)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_grid_found_with_its_period_and_offset(seed: int) -> None:
    prediction = _planted((320, 300), (48, 64), (13, 29), amplitude=0.1, noise=0.1, seed=seed)
    found = find_seams(prediction)
    assert found.detected is True
    assert found.period == [48, 64]
    assert found.offset == [13, 29]
    assert found.seam_map is not None and found.seam_map.max() > 0
    assert found.to_dict()["false_alarm_rate"] == FALSE_ALARM_RATE


def test_amplitude_threshold_over_noise() -> None:
    """Steps of half the noise's standard deviation are found; steps of a fiftieth are not."""
    strong = find_seams(_planted((320, 320), (64, 64), (10, 20), amplitude=0.05, noise=0.1, seed=3))
    faint = find_seams(_planted((320, 320), (64, 64), (10, 20), amplitude=0.002, noise=0.1, seed=3))
    assert strong.detected is True and 64 in strong.period
    assert faint.detected is False


def test_exact_predictions_rarely_alarm() -> None:
    """Smooth predictions without tiles, over many seeds: at most the stated rate (binomial margin)."""
    alarms = 0
    seeds = range(12)
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        prediction = 1 / (1 + np.exp(-ndimage.gaussian_filter(rng.normal(size=(256, 256)), 3) * 20))
        alarms += find_seams(prediction.astype(np.float32)).detected is True
    # P(2 or more alarms in 12 | rate 0.01) = 0.6 %
    assert alarms <= 1


def test_cannot_tell_on_tiny_and_constant_images() -> None:
    tiny = find_seams(np.random.default_rng(0).random((40, 40)))
    assert tiny.detected == "cannot tell" and "too small" in tiny.reason
    flat = find_seams(np.zeros((200, 200), np.float32))
    assert flat.detected == "cannot tell" and "constant" in flat.reason


def test_known_grid_tests_only_its_lines() -> None:
    prediction = _planted((256, 256), (64, 64), (0, 0), amplitude=0.1, noise=0.1, seed=4)
    right = find_seams(prediction, period=64, offset=0)
    wrong = find_seams(prediction, period=64, offset=32)
    assert right.known_grid and right.detected is True and all(a.candidates == 1 for a in right.axes)
    assert wrong.detected is False


def test_three_dimensional_grid() -> None:
    prediction = _planted((80, 128, 128), (32, 32, 32), (5, 9, 0), amplitude=0.2, noise=0.1, seed=5)
    found = find_seams(prediction[np.newaxis])
    assert found.detected is True
    assert found.period[1:] == [32, 32]
    assert found.offset[1:] == [9, 0]


def test_instance_labels_cut_along_the_grid_are_counted() -> None:
    rng = np.random.default_rng(6)
    labels = np.zeros((256, 256), np.int32)
    centres = rng.integers(8, 248, size=(120, 2))
    yy, xx = np.mgrid[:256, :256]
    for i, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 < 36] = i
    cut = labels.copy()
    for boundary in (64, 128, 192):  # blockwise labelling without merging: every object across a seam splits
        cut[:, boundary:] = np.where(cut[:, boundary:] > 0, cut[:, boundary:] + 1000 * (boundary // 64), 0)
    found = find_seams(cut, period=(256, 64), offset=(0, 0))
    assert found.kind == "labels"
    assert found.axes[1].detected
    assert found.objects_cut and found.objects_cut > 0
    assert found.objects_cut <= found.objects
    assert found.to_dict()["objects_cut_share"] == pytest.approx(found.objects_cut / found.objects)
    clean = find_seams(labels, period=(256, 64), offset=(0, 0))
    assert not clean.axes[1].detected


def test_monai_gaussian_sliding_window_shows_its_grid() -> None:
    torch = pytest.importorskip("torch")
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 32, 64, 8),
                    norm=("instance", {"affine": True})).eval()
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(384, 384)), 4)
    image = (image + np.add.outer(np.linspace(0, 3, 384), np.linspace(0, 3, 384))).astype(np.float32)
    with torch.inference_mode():
        blended = sliding_window_inference(torch.from_numpy(image[None, None]), (64, 64), 8, net, overlap=0.25,
                                           mode="gaussian")
    found = find_seams(torch.sigmoid(blended)[0].numpy())
    assert found.detected is True
    assert 48 in found.period  # MONAI's windows step by 64 × (1 - 0.25)


def test_comb_statistic_counts_lines_before_each_core_start() -> None:
    values = np.zeros(99)
    values[[19, 49, 79]] = 1.0  # cores start at 20, 50, 80: period 30, offset 20
    sums, counts = comb_statistic(values, 30)
    assert int(np.argmax(sums)) == 20
    assert sums[20] == pytest.approx(3 / np.sqrt(counts[20]))


def test_bad_arguments_raise_documented_errors() -> None:
    with pytest.raises(ConfigError, match=r"offset .* without a period"):
        find_seams(np.zeros((100, 100)), offset=3)
    with pytest.raises(ConfigError, match="period needs one value or 2"):
        find_seams(np.zeros((100, 100)), period=(10, 10, 10))
    with pytest.raises(ShapeError, match="spatial_dims"):
        find_seams(np.zeros((3, 100, 100)))
    with pytest.raises(ConfigError, match="kind must be"):
        find_seams(np.zeros((100, 100)), kind="probabilities")  # type: ignore[arg-type]


def test_calibration_and_validation_sets_stay_apart() -> None:
    check_disjoint()
    assert {c.stitching for c in VALIDATION} >= {"crop", "gaussian", "whole"}
    assert any(c.image.startswith(("coelho2009", "isbi2012")) for c in VALIDATION)
    with pytest.raises(ValueError, match="share models"):
        check_disjoint(CALIBRATION, (SeamCase("demo-instance", "isbi2012:5", 64),))
    low, high = clopper_pearson(0, 50)
    assert low == 0.0 and 0.05 < high < 0.08  # the exact interval of 0 of 50


def test_cli_seams_json_and_out(tmp_path, capsys) -> None:
    tifffile = pytest.importorskip("tifffile")
    prediction = _planted((320, 300), (48, 64), (13, 29), amplitude=0.1, noise=0.1, seed=0)
    path = tmp_path / "pred.tif"
    tifffile.imwrite(path, prediction)
    assert main(["seams", str(path), "--json", "--out", str(tmp_path / "seams")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"detected", "period", "offset", "score", "z", "false_alarm_rate"} <= set(result)
    assert result["detected"] is True and result["period"] == [48, 64]
    assert (tmp_path / "seams" / "seams.json").exists() and (tmp_path / "seams" / "seam_map.png").exists()
    # an --out folder holding an earlier result is not overwritten without --overwrite
    assert main(["seams", str(path), "--out", str(tmp_path / "seams")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["seams", str(tmp_path / "missing.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["seams", str(path), "--offset", "3"]) == 2


def test_cli_uses_the_grid_a_seamfree_output_records(tmp_path, capsys) -> None:
    import seamfree as sf

    model = sf.UNet(2, in_channels=1, out_channels=1, depth=2, features=4, norm="instance")
    image = np.random.default_rng(0).random((200, 200)).astype(np.float32)
    out = tmp_path / "pred.zarr"
    sf.predict(model, image, out, config=sf.PredictConfig(core=64, allow_small_halo=True))
    assert main(["seams", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["known_grid"] is True
    assert all(a["period"] == 64 and a["offset"] == 0 for a in result["axes"])


def test_block_by_block_equals_all_at_once(monkeypatch) -> None:
    """The line statistics of a prediction read in many small blocks equal those of one read (any size)."""
    from seamfree.diagnostics import seam_lines

    prediction = _planted((2, 70, 90), (24, 32, 32), (5, 9, 0), amplitude=0.1, noise=0.1, seed=7)
    read = lambda window: prediction[(slice(None), *window)]  # noqa: E731
    whole = seam_lines.line_steps(read, prediction.shape[1:], 2)
    monkeypatch.setattr(seam_lines, "BLOCK_VOXELS", 16 ** 3)
    blocks = seam_lines.line_steps(read, prediction.shape[1:], 2)
    for lag in whole.steps:
        for a, b in zip(whole.steps[lag], blocks.steps[lag]):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 4])
def test_thin_volumes_are_measured_not_crashed(depth: int) -> None:
    """A volume thinner than the lag (a few sections, as the study's 3D runs have) still gets an answer."""
    volume = np.random.default_rng(depth).random((1, depth, 96, 96)).astype(np.float32)
    known = find_seams(volume, period=(max(depth, 2), 32, 32), offset=0, spatial_dims=3)
    assert known.detected in (False, "cannot tell")
    searched = find_seams(volume, spatial_dims=3)
    assert searched.detected in (False, "cannot tell")
