"""The layout of OME-Zarr outputs, read by independent readers (ome-zarr-models for the NGFF 0.5 and 0.4 specs,
ngff-zarr for the calibration): viewer-sized chunks inside core-sized shards, label images next to the
probabilities, mask outputs that are label images, channel names, NGFF 0.4 for older tools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seamfree.cli.main import main
from seamfree.errors import ConfigError
from seamfree.models import UNet, save_model
from seamfree.tiling import PredictConfig, predict

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr_models")

from ome_zarr_models.v05.image import Image  # noqa: E402
from ome_zarr_models.v05.image_label import ImageLabel  # noqa: E402
from ome_zarr_models.v05.labels import Labels  # noqa: E402


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {2: UNet(2, 1, 2, depth=1, features=2, norm="batchrenorm").eval(),
            3: UNet(3, 1, 1, depth=1, features=2, norm="batchrenorm").eval()}


def _calibrated_input(path, volume):
    source = zarr.open_group(str(path), mode="w")
    source.create_array("s0", shape=volume.shape, chunks=volume.shape, dtype=volume.dtype,
                        dimension_names=["z", "y", "x"])[:] = volume
    source.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.5, 0.1, 0.1]}, {"type": "translation", "translation": [2.0, 10.0, 20.0]}]}],
    }]}
    return path


def test_level_0_is_sharded_by_core_with_viewer_sized_chunks(nets, tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (700, 1100), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=512))
    array = zarr.open_group(str(out), mode="r")["0"]
    assert array.shards == (2, 512, 512) and array.chunks == (2, 256, 256)
    whole = predict(nets[2], image, config=PredictConfig(core=512))
    np.testing.assert_array_equal(np.asarray(array[...]), whole)  # the same values as unsharded in memory
    Image.from_zarr(zarr.open_group(str(out), mode="r"))
    plain = tmp_path / "plain.zarr"
    predict(nets[2], image, plain, config=PredictConfig(core=512, sharding=False))
    array = zarr.open_group(str(plain), mode="r")["0"]
    assert array.shards is None and array.chunks == (2, 512, 512)


def test_labels_next_to_the_probabilities_validate_and_equal_the_mask(nets, tmp_path):
    volume = np.random.default_rng(1).integers(0, 255, (12, 300, 280), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[3], _calibrated_input(tmp_path / "in.zarr", volume), out,
            config=PredictConfig(core=(12, 128, 128), labels=True, threshold=0.4))
    group = zarr.open_group(str(out), mode="r")
    Image.from_zarr(group)
    assert Labels.from_zarr(group["labels"]).attributes.ome.labels == ["mask"]
    label = ImageLabel.from_zarr(group["labels/mask"])
    assert [d.path for d in label.attributes.ome.multiscales[0].datasets] == ["0", "1"]
    probabilities = np.asarray(group["0"][...])
    np.testing.assert_array_equal(np.asarray(group["labels/mask/0"][...]), (probabilities > 0.4).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(group["labels/mask/1"][...]),
                                  np.asarray(group["labels/mask/0"][...])[:, ::2, ::2, ::2])
    # the label image overlays the image: same calibration at level 0
    image_level0 = Image.from_zarr(group).attributes.ome.multiscales[0].datasets[0]
    assert label.attributes.ome.multiscales[0].datasets[0].coordinateTransformations == \
        image_level0.coordinateTransformations


def test_uint8_probabilities_give_the_same_labels(nets, tmp_path):
    image = np.random.default_rng(2).integers(0, 255, (64, 60), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=32, output_kind="uint8", labels=True))
    group = zarr.open_group(str(out), mode="r")
    reference = predict(nets[2], image, config=PredictConfig(core=32, output_kind="mask"))
    np.testing.assert_array_equal(np.asarray(group["labels/mask/0"][...]), reference)


def test_a_mask_output_is_a_label_image(nets, tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (64, 60), dtype=np.uint8)
    out = tmp_path / "mask.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=32, output_kind="mask"))
    label = ImageLabel.from_zarr(zarr.open_group(str(out), mode="r"))
    colours = label.attributes.ome.image_label.colors
    assert [c.label_value for c in colours] == [0, 1] and colours[0].rgba == (0, 0, 0, 0)
    with pytest.raises(ConfigError, match="output_kind='mask'"):
        PredictConfig(output_kind="mask", labels=True)


def test_channel_names_go_into_the_omero_block(nets, tmp_path):
    image = np.random.default_rng(4).integers(0, 255, (64, 60), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[2], image, out, config=PredictConfig(core=32, channel_names=("background", "membrane")))
    omero = zarr.open_group(str(out), mode="r").attrs["ome"]["omero"]
    assert [c["label"] for c in omero["channels"]] == ["background", "membrane"]
    with pytest.raises(ConfigError, match="2 channels"):
        predict(nets[2], image, tmp_path / "x.zarr", config=PredictConfig(core=32, channel_names=("one",)))


def test_ngff_0_4_for_older_tools_validates_and_resumes(nets, tmp_path):
    from ome_zarr_models.v04.image import Image as Image04
    from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04

    volume = np.random.default_rng(5).integers(0, 255, (12, 300, 280), dtype=np.uint8)
    source = _calibrated_input(tmp_path / "in.zarr", volume)
    out = tmp_path / "out.zarr"
    config = PredictConfig(core=(12, 128, 128), ngff="0.4", labels=True)

    def interrupt(done):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(nets[3], source, out, config=dataclass_replace(config, tiles_per_batch=1), progress=interrupt)
    predict(nets[3], source, out, config=dataclass_replace(config, tiles_per_batch=1))
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 2 and (out / "0" / ".zarray").is_file()
    image = Image04.from_zarr(group)
    multiscale = image.attributes.multiscales[0]
    assert multiscale.version == "0.4" and [a.unit for a in multiscale.axes][1:] == ["micrometer"] * 3
    ImageLabel04.from_zarr(group["labels/mask"])
    np.testing.assert_array_equal(np.asarray(group["0"][...]),
                                  predict(nets[3], source, config=PredictConfig(core=(12, 128, 128))))
    # a 0.4 output is a 0.4 input too, calibration included
    again = tmp_path / "again.zarr"
    predict(nets[3], out, again, config=PredictConfig(core=(12, 128, 128), spatial_dims=3), axes="CZYX")
    _ = Image.from_zarr(zarr.open_group(str(again), mode="r"))


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_ngff_zarr_reads_the_calibration_that_was_put_in(nets, tmp_path):
    ngff_zarr = pytest.importorskip("ngff_zarr")
    volume = np.random.default_rng(6).integers(0, 255, (12, 300, 280), dtype=np.uint8)
    out = tmp_path / "out.zarr"
    predict(nets[3], _calibrated_input(tmp_path / "in.zarr", volume), out, config=PredictConfig(core=(12, 128, 128)))
    multiscales = ngff_zarr.from_ngff_zarr(str(out))
    level0 = multiscales.images[0]
    assert level0.dims == ("c", "z", "y", "x")
    assert level0.scale == {"c": 1.0, "z": 0.5, "y": 0.1, "x": 0.1}
    assert level0.translation == {"c": 0.0, "z": 2.0, "y": 10.0, "x": 20.0}
    assert level0.axes_units == {"c": None, "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    np.testing.assert_array_equal(np.asarray(level0.data), np.asarray(zarr.open_group(str(out))["0"][...]))
    assert len(multiscales.images) == 2 and multiscales.images[1].scale["y"] == pytest.approx(0.2)


def test_cli_labels_channel_names_and_ngff_flags(nets, tmp_path):
    np.save(tmp_path / "image.npy", np.random.default_rng(7).integers(0, 255, (64, 60), dtype=np.uint8))
    checkpoint = save_model(nets[2], tmp_path / "m.pt")
    out = tmp_path / "out.zarr"
    assert main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(out), "-q", "--core", "32",
                 "--labels", "--channel-names", "background,membrane", "--ngff", "0.4"]) == 0
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 2 and "labels" in group
    assert [c["label"] for c in group.attrs["omero"]["channels"]] == ["background", "membrane"]
    with pytest.raises(SystemExit) as refused:  # argparse's own exit for a malformed value
        main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(tmp_path / "x.zarr"), "-q",
              "--channel-names", "a,,b"])
    assert refused.value.code == 2
    assert main(["predict", str(checkpoint), str(tmp_path / "image.npy"), str(tmp_path / "y.zarr"), "-q",
                 "--output-kind", "mask", "--labels"]) == 2
