from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seamfree.errors import ConfigError, DataError, HaloError, OutputExistsError, ShapeError
from seamfree.models import UNet
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import IntensityNormalization, PredictConfig, measure_receptive_field, predict, predict_whole

RAW = IntensityNormalization("none")


def _unet(spatial_dims, norm, scale_factors=None, depth=2):
    torch.manual_seed(0)
    net = UNet(spatial_dims, 1, 2, depth=depth, features=4, norm=norm, scale_factors=scale_factors)
    return randomize_norm_statistics(net).eval()


CASES = [
    ("2d", 2, None, (75, 101), 24),
    ("3d", 3, None, (21, 30, 27), 12),
    ("anisotropic", 3, [(1, 2, 2), (2, 2, 2)], (13, 45, 38), (6, 16, 16)),
]


@pytest.mark.parametrize("norm", ["none", "batch", "batchrenorm"])
@pytest.mark.parametrize(("name", "dims", "factors", "shape", "core"), CASES, ids=[c[0] for c in CASES])
def test_tiled_prediction_equals_whole_image_prediction(norm, name, dims, factors, shape, core, rng):
    net = _unet(dims, norm, factors)
    image = rng.normal(100, 20, size=shape).astype(np.float32)
    reference = predict_whole(net, image)
    tiled = predict(net, image, config=PredictConfig(core=core))
    assert tiled.shape == (2, *shape)
    np.testing.assert_allclose(tiled, reference, rtol=0, atol=1e-5)


def test_small_halo_or_instance_norm_differ_clearly(rng):
    image = rng.normal(size=(96, 96)).astype(np.float32)
    net = _unet(2, "batch")
    radius = measure_receptive_field(net).radius
    assert radius == (23, 23)
    small = predict(net, image, config=PredictConfig(core=32, halo=4, allow_small_halo=True))
    assert np.abs(small - predict_whole(net, image)).max() > 1e-5  # float noise is ~1e-7
    instance = _unet(2, "instance")
    tiled = predict(instance, image, config=PredictConfig(core=32, halo=24))
    assert np.abs(tiled - predict_whole(instance, image)).max() > 1e-3
    assert measure_receptive_field(instance).tile_dependent


def test_small_halo_is_refused_in_crop_mode(rng):
    needs = r"halo \(4, 4\) is smaller than the halo \(24, 24\) that this model's receptive field \(radius \(23, 23\)\)"
    with pytest.raises(HaloError, match=needs):
        predict(_unet(2, "batch"), rng.normal(size=(96, 96)), config=PredictConfig(core=32, halo=4))


class Identity(nn.Module):
    spatial_dims = 2
    network_stride = (1, 1)

    def forward(self, x):
        return x * 1.0


def _box_filter():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return conv.eval()


@pytest.mark.parametrize("stitching", ["crop", "blend"])
@pytest.mark.parametrize("window", ["linear", "gaussian"])
def test_identity_and_linear_models_give_exact_expected_output(stitching, window, rng):
    image = rng.random((1, 37, 50)).astype(np.float32)
    config = PredictConfig(core=16, halo=2, stitching=stitching, blend_window=window, normalization=RAW)
    out = predict(Identity(), image, config=config)
    np.testing.assert_allclose(out, image, atol=1e-6)
    expected = torch.nn.functional.conv2d(torch.from_numpy(image)[None], torch.ones(1, 1, 3, 3), padding=1)[0]
    out = predict(_box_filter(), image, config=config)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_global_intensity_normalization_is_used_not_per_tile(rng):
    image = np.concatenate([rng.normal(10, 1, (64, 32)), rng.normal(200, 30, (64, 32))], axis=1)
    out = predict(Identity(), image, config=PredictConfig(core=16, halo=0))
    lo, hi = np.percentile(image, [1, 99.8])
    np.testing.assert_allclose(out[0], (image - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    per_tile = predict(Identity(), image, config=PredictConfig(core=16, halo=0,
                                                             normalization=IntensityNormalization("per_tile")))
    assert np.abs(per_tile - out).max() > 0.5


def test_output_kinds_and_tta(rng):
    net = _unet(2, "batchrenorm")
    image = rng.normal(size=(40, 48)).astype(np.float32)
    probabilities = predict(net, image, config=PredictConfig(core=16))
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)  # softmax over 2 channels
    scaled = predict(net, image, config=PredictConfig(core=16, output_kind="uint8"))
    assert scaled.dtype == np.uint8
    assert np.abs(scaled / 255.0 - probabilities).max() <= 0.5 / 255 + 1e-6
    mask = predict(net, image, config=PredictConfig(core=16, output_kind="mask"))
    np.testing.assert_array_equal(mask[0], probabilities.argmax(axis=0))
    tta = predict(net, image, config=PredictConfig(core=16, tta=True))
    assert np.abs(tta - probabilities).max() > 1e-4  # the flip average is a different prediction
    # ... and exactly the average of the whole-image predictions of the four flipped images, flipped back
    # (40 × 48 is a multiple of the network stride: no border padding, so every flip sees the same image)
    flips = [(), (0,), (1,), (0, 1)]
    reference = np.mean([np.flip(predict_whole(net, np.flip(image, f).copy()), [a + 1 for a in f]) for f in flips],
                        axis=0)
    np.testing.assert_allclose(tta, reference, rtol=0, atol=1e-5)


def test_bad_input_is_reported(rng, tmp_path):
    net = _unet(2, "batch")
    with pytest.raises(ShapeError, match="4 dimensions but the model expects 2 spatial"):
        predict(net, rng.normal(size=(2, 8, 16, 16)))
    with pytest.raises(ShapeError, match=r"2 channel\(s\) .* the model expects 1"):
        predict(net, rng.normal(size=(2, 16, 16)))
    bad = rng.normal(size=(64, 64)).astype(np.float32)
    bad[40, 40] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        predict(net, bad, tmp_path / "out.zarr", config=PredictConfig(core=32))
    assert not (tmp_path / "out.zarr").exists()  # nothing that looks like an output
    with pytest.raises(DataError, match="unsupported image dtype complex128"):
        predict(net, np.zeros((16, 16), complex))
    with pytest.raises(ConfigError, match="stitching must be"):
        PredictConfig(stitching="average")  # type: ignore[arg-type]
    small = rng.normal(size=(5, 7)).astype(np.float32)  # smaller than one network stride on both axes
    tiny = predict(net, small, config=PredictConfig(core=64))
    assert tiny.shape == (2, 5, 7)
    np.testing.assert_allclose(tiny, predict_whole(net, small), rtol=0, atol=1e-5)


def test_existing_output_of_other_shape_or_dtype_is_never_overwritten(rng, tmp_path):
    zarr = pytest.importorskip("zarr")
    net = _unet(2, "batch")
    image = rng.normal(size=(32, 32)).astype(np.float32)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("0", shape=(2, 32, 32), dtype="f4")
    with pytest.raises(OutputExistsError, match="not written by seamfree"):
        predict(net, image, foreign, config=PredictConfig(core=16))
    out = tmp_path / "out.zarr"
    predict(net, image, out, config=PredictConfig(core=16))
    with pytest.raises(OutputExistsError, match=r"dtype float32, this prediction needs .* uint8"):
        predict(net, image, out, config=PredictConfig(core=16, output_kind="uint8"))
    with pytest.raises(OutputExistsError, match="made with different settings"):
        predict(net, image, out, config=PredictConfig(core=32))
    predict(net, image, out, config=PredictConfig(core=32, overwrite=True))
