"""OME-Zarr outputs checked by an independent reader (ome-zarr-models, NGFF 0.5): valid, calibrated like their
input (scale, translation, units), with dimension names, and nothing in the store that zarr warns about."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.models import UNet, save_model
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
ome_zarr_models = pytest.importorskip("ome_zarr_models")

from ome_zarr_models.v05.image import Image  # noqa: E402


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {2: UNet(2, 1, 2, depth=1, features=2, norm="batchrenorm").eval(),
            3: UNet(3, 1, 1, depth=1, features=2, norm="batchrenorm").eval()}


def _validated(path):
    group = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(group)  # raises on any violation of the NGFF 0.5 image spec
    return group, image.ome_attributes.multiscales[0]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kind", ["float32", "uint8", "mask"])
def test_outputs_validate_as_ome_zarr_0_5(nets, tmp_path, dims, kind):
    shape = (48, 40) if dims == 2 else (12, 24, 20)
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[dims], image, out, config=PredictConfig(core=16 if dims == 2 else (8, 16, 16), output_kind=kind))
    group, multiscale = _validated(out)
    assert group["0"].metadata.dimension_names == ("c", *"zyx"[-dims:])
    assert [a.name for a in multiscale.axes] == ["c", *"zyx"[-dims:]]


def test_the_input_calibration_carries_over(nets, tmp_path):
    """An OME-Zarr input at (0.5, 0.1, 0.1) µm with origin (2, 10, 20) µm gives an output that overlays it."""
    volume = np.random.default_rng(1).integers(0, 255, (12, 24, 20), dtype=np.uint8)
    source = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    source.create_array("s0", shape=volume.shape, chunks=(12, 24, 20), dtype="u1",
                        dimension_names=["z", "y", "x"])[:] = volume
    source.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.5, 0.1, 0.1]}, {"type": "translation", "translation": [2.0, 10.0, 20.0]}]}],
    }]}
    out = tmp_path / "out.zarr"
    predict(nets[3], tmp_path / "in.zarr", out, config=PredictConfig(core=(8, 16, 16)))
    _, multiscale = _validated(out)
    assert [a.unit for a in multiscale.axes] == [None, "micrometer", "micrometer", "micrometer"]
    scale, translation = multiscale.datasets[0].coordinateTransformations
    assert scale.scale == [1.0, 0.5, 0.1, 0.1] and translation.translation == [0.0, 2.0, 10.0, 20.0]


def test_voxel_size_and_unit_for_inputs_without_them(nets, tmp_path):
    np.save(tmp_path / "image.npy", np.random.default_rng(2).integers(0, 255, (48, 40), dtype=np.uint8))
    checkpoint = save_model(nets[2], tmp_path / "m.pt")
    out = tmp_path / "out.zarr"
    assert main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(out), "-q", "--voxel-size", "0.25",
                 "--unit", "um"]) == 0
    _, multiscale = _validated(out)
    assert [a.unit for a in multiscale.axes] == [None, "micrometer", "micrometer"]
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.0, 0.25, 0.25]
    assert main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(tmp_path / "x.zarr"), "-q",
                 "--unit", "parsecs-ish"]) == 2


def test_listing_an_output_warns_about_nothing(nets, tmp_path):
    """The done markers live beside the store, so zarr finds nothing it does not recognise (warnings are errors
    in this suite), during a run and after it."""
    image = np.random.default_rng(3).integers(0, 255, (48, 40), dtype=np.uint8)
    out = tmp_path / "out.zarr"

    def interrupt(done):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(nets[2], image, out, config=PredictConfig(core=16, tiles_per_batch=1), progress=interrupt)
    assert [name for name, _ in zarr.open_group(str(out), mode="r").members()] == ["0"]
    predict(nets[2], image, out, config=PredictConfig(core=16, tiles_per_batch=1))
    assert [name for name, _ in zarr.open_group(str(out), mode="r").members()] == ["0"]


@pytest.mark.parametrize("flavour", ["ome", "imagej"])
def test_tiff_pixel_sizes_carry_over(nets, tmp_path, flavour):
    tifffile = pytest.importorskip("tifffile")
    image = np.random.default_rng(4).integers(0, 255, (48, 40), dtype=np.uint8)
    path = tmp_path / "in.tif"
    if flavour == "ome":
        tifffile.imwrite(path, image, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3,
                                                          "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    else:
        tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.2, 1 / 0.3), metadata={"unit": "um"})
    out = tmp_path / "out.zarr"
    predict(nets[2], path, out, config=PredictConfig(core=16))
    _, multiscale = _validated(out)
    assert [a.unit for a in multiscale.axes] == [None, "micrometer", "micrometer"]
    np.testing.assert_allclose(multiscale.datasets[0].coordinateTransformations[0].scale, [1.0, 0.3, 0.2], rtol=1e-6)


def test_the_pyramid_matches_a_whole_array_downsampling_and_validates(nets, tmp_path):
    from seamfree.io.pyramid import downsample

    image = np.random.default_rng(5).integers(0, 255, (600, 520), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=128))
    group, multiscale = _validated(out)
    assert [d.path for d in multiscale.datasets] == ["0", "1", "2"]
    assert group["1"].shape == (2, 300, 260) and group["2"].shape == (2, 150, 130)
    reference = np.asarray(group["0"][...])
    for level in (1, 2):
        reference = downsample(reference, "mean")
        np.testing.assert_array_equal(np.asarray(group[str(level)][...]), reference)
        scale, translation = multiscale.datasets[level].coordinateTransformations
        assert scale.scale == [1.0, 2.0 ** level, 2.0 ** level]
        assert translation.translation == [0.0, (2 ** level - 1) / 2, (2 ** level - 1) / 2]  # centres overlay


def test_a_mask_pyramid_takes_every_second_voxel(nets, tmp_path):
    image = np.random.default_rng(6).integers(0, 255, (520, 300), dtype=np.uint8)
    out = tmp_path / "mask.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=128, output_kind="mask"))
    group, multiscale = _validated(out)
    level0 = np.asarray(group["0"][...])
    np.testing.assert_array_equal(np.asarray(group["1"][...]), level0[:, ::2, ::2])
    assert len(multiscale.datasets[1].coordinateTransformations) == 1  # no half-voxel shift for a subsample


def test_the_pyramid_resumes_after_an_interruption(nets, tmp_path, monkeypatch):
    import seamfree.io.pyramid as pyramid

    image = np.random.default_rng(7).integers(0, 255, (600, 520), dtype=np.uint8)
    reference = tmp_path / "reference.zarr"
    predict(nets[2], image, reference, config=PredictConfig(core=128))
    original, calls = pyramid.downsample, []

    def failing(block, method, lead=1):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt  # a kill in the middle of level 1
        return original(block, method, lead)

    out = tmp_path / "out.zarr"
    monkeypatch.setattr(pyramid, "downsample", failing)
    with pytest.raises(KeyboardInterrupt):
        predict(nets[2], image, out, config=PredictConfig(core=128))
    assert zarr.open_group(str(out), mode="r").attrs["seamfree"]["status"] == "incomplete"
    calls.clear()
    monkeypatch.setattr(pyramid, "downsample",
                        lambda block, method, lead=1: (calls.append(1), original(block, method, lead))[1])
    predict(nets[2], image, out, config=PredictConfig(core=128))
    total = sum(-(-s // 128) * -(-t // 128) for s, t in ((300, 260), (150, 130)))
    assert len(calls) == total - 5  # the 5 blocks written before the interruption were not written again
    for level in ("0", "1", "2"):
        np.testing.assert_array_equal(np.asarray(zarr.open_group(str(out))[level][...]),
                                      np.asarray(zarr.open_group(str(reference))[level][...]))


def test_no_pyramid_writes_level_0_only(nets, tmp_path):
    image = np.random.default_rng(8).integers(0, 255, (600, 520), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=128, pyramid=False))
    group, multiscale = _validated(out)
    assert [name for name, _ in group.members()] == ["0"] and len(multiscale.datasets) == 1


def test_ome_tiff_in_and_out_overlay(nets, tmp_path):
    """An OME-TIFF input's pixel sizes and origin reach the OME-TIFF output (read back by tifffile's OME-XML
    parser), which is memory-mapped, signed as seamfree's and complete only after its rename."""
    tifffile = pytest.importorskip("tifffile")
    from seamfree.io.safety import is_seamfree_tiff

    image = np.random.default_rng(9).integers(0, 255, (6, 48, 40), dtype=np.uint8)
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(source, image, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm",
        "Plane": {"PositionZ": [2.0 + 1.5 * z for z in range(6)], "PositionY": [10.0] * 6, "PositionX": [20.0] * 6}})
    out = tmp_path / "out.ome.tif"
    predict(nets[3], source, out, config=PredictConfig(core=(6, 16, 16), channel_names=("foreground",)))
    with tifffile.TiffFile(out) as tiff:
        series = tiff.series[0]
        sizes = dict(zip(series.get_axes(False), series.get_shape(False)))  # unsqueezed: T, C, Z, Y, X, samples
        assert tiff.is_ome and (sizes["C"], sizes["Z"], sizes["Y"], sizes["X"]) == (1, 6, 48, 40)
        pixels = tifffile.xml2dict(tiff.ome_metadata)["OME"]["Image"]["Pixels"]
    assert (pixels["PhysicalSizeZ"], pixels["PhysicalSizeY"], pixels["PhysicalSizeX"]) == (1.5, 0.3, 0.2)
    assert pixels["PhysicalSizeXUnit"] == "µm" and pixels["Channel"]["Name"] == "foreground"
    positions = [(p["PositionZ"], p["PositionY"], p["PositionX"]) for p in pixels["Plane"]]
    assert positions == [(2.0 + 1.5 * z, 10.0, 20.0) for z in range(6)]  # the origin, and each plane's own Z
    assert is_seamfree_tiff(out)
    expected = predict(nets[3], source, config=PredictConfig(core=(6, 16, 16)))
    np.testing.assert_array_equal(tifffile.imread(out), expected[0])  # tifffile squeezes the single channel
    # and it reads back as an input with the same calibration
    again = tmp_path / "again.zarr"
    predict(nets[3], out, again, config=PredictConfig(core=(6, 16, 16)))
    _, multiscale = _validated(again)
    np.testing.assert_allclose(multiscale.datasets[0].coordinateTransformations[0].scale, [1.0, 1.5, 0.3, 0.2])
    np.testing.assert_allclose(multiscale.datasets[0].coordinateTransformations[1].translation, [0, 2.0, 10.0, 20.0])
    assert [a.unit for a in multiscale.axes][1:] == ["micrometer"] * 3
