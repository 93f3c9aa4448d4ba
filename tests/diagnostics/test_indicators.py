"""Tile mismatch, train/eval disparity, seam score and exactness on tiny fixed-weight models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seamfree.diagnostics import DiagnoseConfig, diagnose, seam_score
from seamfree.diagnostics.disparity import _standard_errors, ted_batch_count, train_eval_disparity
from seamfree.diagnostics.mismatch import shifted_tiles
from seamfree.io import open_image
from seamfree.layers import set_renorm_schedule
from seamfree.models import UNet
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import IntensityNormalization, TileGrid

FAST = DiagnoseConfig(core=48, patch_size=32, batch_size=2, ted_batches=2)


def _net(norm, depth=2, out=1):
    torch.manual_seed(0)
    return randomize_norm_statistics(UNet(2, 1, out, depth=depth, features=4, norm=norm)).eval()


@pytest.fixture
def image(rng):
    # structure with an atypical region: per-tile statistics differ from tile to tile
    image = rng.normal(0, 1, size=(160, 176)).astype(np.float32)
    image[:60, :70] += 4.0
    return image


def test_fixed_statistics_give_tile_mismatch_at_noise_and_exact_tiling(image):
    for norm in ("none", "batch", "batchrenorm"):
        d = diagnose(_net(norm), image, config=FAST)
        assert d.tile_mismatch.tm_abs < 1e-6 and d.tile_mismatch.shifted_tm_abs < 1e-6, norm
        assert d.tile_mismatch.tm_dice < 1e-3, norm
        assert d.exactness.exact and d.exactness.max_abs < 1e-5, norm
        assert d.recommendation.verdict != "tiling artifacts", norm


def test_per_tile_statistics_give_clear_mismatch_and_zero_disparity(image):
    d = diagnose(_net("instance"), image, config=FAST)
    assert d.tile_mismatch.tm_abs > 1e-3
    assert d.tile_mismatch.shifted_tm_abs > 1e-3
    assert d.disparity.ted_dice == 0.0 and d.disparity.ted_abs == 0.0  # the same computation in both modes
    assert not d.exactness.exact
    assert d.recommendation.verdict == "tiling artifacts"
    assert "InstanceNorm2d" in d.recommendation.message and "BatchRenorm" in " ".join(d.recommendation.actions)
    assert np.nanmax(d.tile_mismatch.map) > 1e-3


def test_pairs_cover_exactly_the_compared_voxels(image):
    d = diagnose(_net("instance"), image, config=FAST)
    tm = d.tile_mismatch
    voxels = sum(math.prod(s.stop - s.start for s in pair.region) for pair in tm.pairs)
    assert voxels == tm.compared_voxels == int(np.isfinite(tm.map).sum())
    assert len({(p.a, p.b) for p in tm.pairs}) == len(tm.pairs) >= 4
    assert all(0.0 <= v <= 1.0 for p in tm.pairs for v in p.dice)


def test_multichannel_outputs_are_reported_per_channel(image):
    d = diagnose(_net("instance", out=3), image, config=FAST)
    assert len(d.tile_mismatch.per_channel) == 3 and len(d.disparity.per_channel) == 3
    mean = np.mean([c["tm_abs"] for c in d.tile_mismatch.per_channel])
    assert d.tile_mismatch.tm_abs == pytest.approx(mean)


@pytest.mark.parametrize("norm", ["batch", "batchrenorm", "instance_tracked"])
def test_disparity_leaves_the_model_exactly_as_it_was(norm, image):
    net = _net(norm)
    if norm == "batchrenorm":
        set_renorm_schedule(net, warmup_steps=0, ramp_steps=1)
        for m in net.modules():
            if hasattr(m, "num_batches_tracked") and m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(7)
    net.train()  # the caller's mode must come back too
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with open_image(image, spatial_dims=2) as source:
        ted = train_eval_disparity(net, source, normalization=IntensityNormalization("meanstd", offset=(0.0,),
                                   scale=(1.0,)), patch_size=32, batch_size=2, batches=3)
    assert net.training
    after = net.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert ted.ted_abs > 0  # random running statistics do not match the batches
    assert ted.layers_with_running_statistics == 10  # 5 conv blocks × 2 norms


def test_disparity_with_ground_truth_gives_delta_dice(image):
    truth = (image > 1.0).astype(np.uint8)
    with open_image(image, spatial_dims=2) as source:
        ted = train_eval_disparity(_net("batch"), source, normalization=IntensityNormalization("none"),
                                   patch_size=32, batch_size=2, batches=2, ground_truth=truth)
    assert ted.delta_dice == pytest.approx(ted.dice_train - ted.dice_eval)


def test_ted_uses_32_patches_by_default_and_reports_standard_errors_over_batches(image):
    """A batch-1 model gets 32 TED batches by default (8 patches moved its ΔDice by 0.3); the standard errors
    are the spread of the per-batch values over √batches, here against a hand-computed case."""
    assert [ted_batch_count(b) for b in (1, 2, 4, 8, 16)] == [32, 16, 8, 8, 8]
    # 4 batches of 4 voxels; ground truth all foreground. Per batch Dice(train, gt) − Dice(eval, gt):
    # batch 0: train 4/4 → 1, eval 2/4 → 2·2/6; batch 1: both all → 0; batch 2: train 0, eval all → −1; 3: 0.
    gt = np.ones((1, 16), bool)
    train = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]], bool)
    evaluated = np.array([[1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], bool)
    deltas = [1 - 4 / 6, 0.0, -1.0, 0.0]
    teds = [1 - 4 / 6, 0.0, 1.0, 0.0]  # 1 − Dice(train, eval) per batch (both empty would be 0)
    ted_se, delta_se = _standard_errors(train, evaluated, gt, 4)
    assert delta_se == pytest.approx(np.std(deltas, ddof=1) / 2)
    assert ted_se == pytest.approx(np.std(teds, ddof=1) / 2)
    assert _standard_errors(train, evaluated, gt, 1) == (None, None)
    truth = (image > 1.0).astype(np.uint8)
    d = diagnose(_net("batch"), image, ground_truth=truth,
                 config=DiagnoseConfig(core=48, patch_size=32, batch_size=1))
    assert d.disparity.batches == 32 and d.disparity.to_dict()["delta_dice_se"] > 0


def test_disparity_batches_on_a_sparse_target_are_drawn_like_training_batches(image):
    """With ground truth and a foreground fraction, TED patches are centred on foreground like the training
    sampler's: the ground truth seen in the batches holds far more foreground than uniform patches do."""
    truth = np.zeros(image.shape, np.uint8)
    truth[10:14, 70:74] = 1  # 16 of the image's voxels

    def seen(fraction):
        with open_image(image, spatial_dims=2) as source:
            ted = train_eval_disparity(_net("batch"), source, normalization=IntensityNormalization("none"),
                                       patch_size=16, batch_size=2, batches=8, ground_truth=truth,
                                       foreground_fraction=fraction)
        return ted

    centred, uniform = seen(1.0), seen(0.0)
    assert centred.to_dict()["sampling"] == "training" and centred.foreground_fraction == 1.0
    assert uniform.to_dict()["sampling"] == "uniform" and uniform.foreground_fraction == 0.0
    assert centred.patches_with_foreground == 1.0  # every centred patch holds the square
    assert uniform.patches_with_foreground is not None and uniform.patches_with_foreground < 0.5


def test_seam_score_sees_steps_at_seams_and_ignores_the_stride_pattern(rng):
    grid = TileGrid.create((128, 128), 32, 8, network_stride=4)
    smooth = rng.normal(0, 0.1, size=(1, 128, 128)).astype(np.float32)
    noise = seam_score(smooth, grid)
    assert noise.detected is False and noise.ci[0] < 1 < noise.ci[1]  # about 1: white noise is a hard case
    periodic = smooth.copy()
    periodic[:, :, 3::4] += 1.0  # a stride-4 pattern, like a pooling network's, is not a seam
    periodic[:, 3::4, :] += 1.0
    pattern = seam_score(periodic, grid)
    assert pattern.detected is False and pattern.ci[0] < 1 < pattern.ci[1]
    stepped = smooth.copy()
    for k in range(4):  # every core gets its own offset: visible seams
        stepped[:, 32 * k:32 * (k + 1), :] += 0.5 * k
    result = seam_score(stepped, grid)
    assert result.score > 2 and result.per_axis[0] > 4 and result.per_axis[1] < 2
    assert result.detected and result.z > 10 and result.ci[0] > 2
    # the map shows the excess: the row seams, nothing on the invisible column seams, nothing elsewhere
    assert result.map[32].max() > 0.4 and result.map[16, 10] == 0 and result.map[16, 32] == 0
    assert "seams detected" in result.summary


@pytest.mark.parametrize("seed", range(12))
def test_a_seamless_prediction_is_never_flagged(seed):
    """Predictions with nothing at their seams — smooth fields, textured ones, a stride pattern, edges that cross
    the seams — are not flagged, whatever the grid (the calibration an exactly tiled model relies on)."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    field = scipy_ndimage.gaussian_filter(rng.normal(size=(384, 320)), sigma=float(rng.uniform(1, 8)))
    field = (field - field.min()) / (field.max() - field.min())
    if seed % 3 == 0:
        field[:, ::8] += 0.05  # the stride pattern of a pooling network
    if seed % 3 == 1:
        field = (field > 0.5).astype(np.float64)  # hard edges everywhere, crossing seams at random
    prediction = field[np.newaxis].astype(np.float32)
    core = int(rng.choice([32, 64, 96]))
    grid = TileGrid.create(prediction.shape[1:], core, 16, network_stride=8, offset=int(rng.integers(0, 4)) * 8)
    result = seam_score(prediction, grid)
    assert result.detected is False, (seed, result.summary)
    assert not result.faint and "no visible seams" in result.summary, (seed, result.summary)
    assert result.map.max() == 0 or np.count_nonzero(result.map) < 0.02 * result.map.size


def test_the_summary_says_faint_seams_where_the_excess_is_systematic_but_below_the_threshold():
    """The demo's InstanceNorm case: score 1.41 [1.25, 1.60] with z 3.8 is not "no visible seams"."""
    from seamfree.diagnostics.seams import SeamScore

    def score(ci: tuple[float, float], z: float, detected: bool) -> SeamScore:
        return SeamScore(score=1.41, per_axis=[1.41, 1.2], seam_jump=1.41, interior_jump=1.0, seams=14,
                         map=np.zeros((8, 8)), z=z, ci=ci, segments=200, detected=detected)

    faint = score((1.25, 1.60), 3.8, False)
    assert faint.faint and faint.summary.startswith("faint seams, below the detection threshold z 4 (score 1.41")
    assert not score((0.95, 1.60), 3.8, False).faint  # the interval reaches 1: nothing systematic
    assert not score((1.25, 1.60), 1.5, False).faint  # not significant
    detected = score((1.25, 1.60), 6.0, True)
    assert not detected.faint and detected.summary.startswith("seams detected")


def test_a_faint_per_tile_offset_on_a_textured_image_is_flagged():
    """What InstanceNorm does: a small offset per tile (here 2 % of the range), under image texture far larger."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    field = scipy_ndimage.gaussian_filter(rng.normal(size=(384, 320)), sigma=2.0)
    field = (field - field.min()) / (field.max() - field.min())
    grid = TileGrid.create(field.shape, 64, 16, network_stride=8)
    tiled = field.copy()
    for tile in grid.tiles():
        tiled[tile.write] += rng.normal(0, 0.02)
    assert seam_score(field[np.newaxis], grid).detected is False
    result = seam_score(tiled[np.newaxis].astype(np.float32), grid)
    assert result.detected, result.summary


def test_image_structure_on_a_seam_is_not_a_seam_when_the_shifted_prediction_is_the_baseline():
    """A brightness step between the image's halves, exactly on a seam (the demo image's): nearby lines cannot
    tell it from a seam, the same segments predicted on grid B can. Exact tiling: no excess at all."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(2)
    field = scipy_ndimage.gaussian_filter(rng.normal(size=(384, 384)), sigma=2.0)
    field = (field - field.min()) / (field.max() - field.min())
    field[:, 192:] += 0.5  # a step at x = 192, a multiple of the core
    grid_a = TileGrid.create(field.shape, 64, 16, network_stride=8)
    grid_b = TileGrid.create(field.shape, 64, 16, network_stride=8, offset=32)
    exact = field[np.newaxis].astype(np.float32)
    assert seam_score(exact, grid_a).per_axis[1] > 2  # the known limit of nearby lines: "a seam 2× the rest"
    paired = seam_score(exact, grid_a, reference=(exact, grid_b))
    assert paired.paired and paired.detected is False and paired.z == 0 and paired.score == 1
    assert paired.map.max() == 0
    tiled = exact.copy()  # per-tile offsets on top: flagged against the same baseline
    for tile in grid_a.tiles():
        tiled[(slice(None), *tile.write)] += rng.normal(0, 0.02)
    assert seam_score(tiled, grid_a, reference=(exact, grid_b)).detected
    # grid B covering only its whole cores (NaN elsewhere, as diagnose makes it) changes nothing
    covered = np.full_like(exact, np.nan)
    covered[:, 32:352, 32:352] = exact[:, 32:352, 32:352]
    assert seam_score(exact, grid_a, reference=(covered, grid_b)).z == 0
    # a grid B that breaks at the same lines is no baseline: nearby lines again
    assert not seam_score(exact, grid_a, reference=(exact, grid_a)).paired


def test_diagnose_does_not_flag_an_exact_model_on_an_image_with_a_step_on_a_seam(rng):
    image = rng.normal(0.5, 0.1, size=(192, 192)).astype(np.float32)
    image[:, 96:] += 0.5  # the step lies on the seam between the second and third cores (core 48)
    d = diagnose(_net("batchrenorm"), image, config=FAST)
    assert d.exactness.exact and d.exactness.max_abs < 1e-5
    assert d.seams.paired and d.seams.detected is False and abs(d.seams.z) < 1e-6


def test_shifted_grid_tiles_have_whole_cores():
    grid = TileGrid.create((200, 120), 64, 16, network_stride=8, offset=32)
    tiles = shifted_tiles(grid)
    assert tiles and all(w.stop - w.start == 64 for t in tiles for w in t.write)


def test_no_normalization_is_fine_and_said_so(image):
    d = diagnose(_net("none"), image, config=FAST)
    assert d.audit.verdict == "no-normalization"
    assert d.recommendation.verdict == "seamless" and "no normalization" in d.recommendation.message


def test_three_dimensional_volumes_are_diagnosed(rng):
    torch.manual_seed(0)
    volume = rng.normal(0, 1, size=(40, 72, 72)).astype(np.float32)
    volume[:, :30, :30] += 3
    config = DiagnoseConfig(core=(16, 32, 32), patch_size=(16, 32, 32), batch_size=2, ted_batches=1)
    for norm, artifacts in (("instance", True), ("batchrenorm", False)):
        net = randomize_norm_statistics(UNet(3, 1, 1, depth=1, features=2, norm=norm)).eval()
        d = diagnose(net, volume, config=config)
        assert (d.tile_mismatch.tm_abs > 1e-3) == artifacts, norm
        assert d.seams.score is not None and len(d.seams.per_axis) == 3
        assert d.tile_mismatch.map.shape == volume.shape


def test_instance_tile_mismatch_counts_objects_the_seams_cut(image):
    """A per-tile-statistics model's tilings disagree object by object; a fixed-statistics model's never do (with
    objects present). With instance ground truth, the tiled components are scored."""
    import dataclasses

    from scipy import ndimage

    found = {}
    for norm in ("batchrenorm", "instance"):
        net = _net(norm)
        threshold = float(np.quantile(diagnose(net, image, config=FAST).prediction, 0.7))  # objects, not all or none
        found[norm] = diagnose(net, image, config=dataclasses.replace(FAST, threshold=threshold))
    seamless, seams = found["batchrenorm"].instances, found["instance"].instances
    assert seamless.objects_a > 20 and seamless.differing == 0 and seamless.fraction == 0.0
    # the regions between objects (cells between membranes), labelled only where both grids predicted: the
    # band grid B leaves out must not join them (it did, and gave an exact model an instance TM of 8 %)
    background = diagnose(_net("batchrenorm"), image, config=dataclasses.replace(
        FAST, threshold=found["batchrenorm"].geometry["threshold"], objects="background")).instances
    assert background.objects_a > 5 and background.differing == 0
    assert seams.objects_a > 20 and seams.differing > 0 and seams.fraction > 0.01
    assert seams.map.any() and seams.map.shape == image.shape
    config = dataclasses.replace(FAST, threshold=found["batchrenorm"].geometry["threshold"])
    truth = ndimage.label(found["batchrenorm"].prediction[0] > config.threshold)[0]  # its own objects as truth
    scored = diagnose(_net("batchrenorm"), image, ground_truth=truth, config=config)
    assert scored.instance_scores["msa"] == 1.0 and scored.instance_scores["true_objects"] == int(truth.max())
    assert scored.to_dict()["instances"]["differing_a"] == 0
