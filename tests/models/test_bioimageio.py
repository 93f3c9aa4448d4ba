"""bioimage.io model packages, checked by bioimage.io's own tools: exported packages pass ``bioimageio.core``'s
``test_model``; packages load with either weight format and predict what ``bioimageio.core`` predicts; a package
that declares too small a halo is flagged; a corrupt one is a one-line error."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from seamfree.cli.main import main
from seamfree.errors import CheckpointError
from seamfree.models import UNet, describe_model, load_model, save_model
from seamfree.models.bioimageio import export_bioimageio, package_info
from seamfree.tiling import IntensityNormalization, PredictConfig, predict

bioimageio_core = pytest.importorskip("bioimageio.core")

pytestmark = pytest.mark.filterwarnings("ignore")  # bioimageio/pydantic deprecation chatter is not ours


def _net(norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, features=4, norm=norm).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return export_bioimageio(_net(), tmp_path_factory.mktemp("bio") / "unet.zip", name="seamfree unet")


def _core_prediction(path, image: np.ndarray, weight_format: str) -> np.ndarray:
    from bioimageio.core import predict as core_predict
    from bioimageio.spec import load_model_description

    descr = load_model_description(path)
    assert getattr(descr.weights, weight_format) is not None  # the only weights of the package
    sample = core_predict(model=descr, inputs={"raw": image[None, None]})
    return np.asarray(sample.members["prediction"].data)[0]


def test_an_exported_package_passes_bioimageio_test_model(package):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    descr = load_model_description(package)
    info = describe_model(_net())
    assert [a.halo for a in descr.outputs[0].axes[2:]] == list(info.receptive_field.halo)
    assert [a.size.step for a in descr.inputs[0].axes[2:]] == list(info.network_stride)
    assert "tile-independent" in descr.description
    assert set(descr.weights.model_fields_set) >= {"pytorch_state_dict", "torchscript"}


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_a_package_predicts_what_bioimageio_core_predicts(tmp_path, weights, rng):
    path = export_bioimageio(_net(), tmp_path / f"{weights}.zip", weights=(weights,))
    model = load_model(path)
    declared = package_info(model)
    assert declared is not None and declared.weights == weights and declared.activation == "sigmoid"
    assert isinstance(model, UNet) == (weights == "pytorch_state_dict")  # real layers for the audit
    assert declared.normalization == {"method": "percentile", "low": 1.0, "high": 99.8}
    image = rng.normal(size=(96, 96)).astype(np.float32)  # fits in one tile
    ours = predict(model, image, config=PredictConfig(normalization=IntensityNormalization(**declared.normalization)))
    theirs = _core_prediction(path, image, weights)
    assert ours.shape == theirs.shape
    # bioimageio.core pads the image border by the declared halo its own way; seamfree feeds the image as it is
    # (the network's zero padding, as a whole-image forward does): inside the halo the two agree to float noise
    h = declared.declared_halo[0]
    assert np.abs(ours - theirs)[:, h:-h, h:-h].max() < 1e-4
    info = describe_model(model)
    assert info.verdict == "tile-independent"
    assert any("computed over the whole image, once" in note for note in info.notes)  # not per tile


def test_a_package_declaring_too_small_a_halo_is_flagged(tmp_path, capsys):
    path = export_bioimageio(_net("instance"), tmp_path / "small.zip", declared_halo=(4, 4))
    info = describe_model(load_model(path))
    assert any("declares halo (4, 4)" in note for note in info.notes) and info.verdict == "tile-dependent"
    assert main(["audit", str(path)]) == 0
    assert "declares halo (4, 4)" in capsys.readouterr().out


def test_packages_from_the_cli(tmp_path, capsys, rng):
    checkpoint = save_model(_net(), tmp_path / "net.pt")
    out = tmp_path / "exported.zip"
    assert main(["export", str(checkpoint), "--bioimageio", str(out)]) == 0
    assert main(["export", str(checkpoint), "--bioimageio", str(out)]) == 2  # never replaced silently
    assert "--overwrite" in capsys.readouterr().err
    image = rng.normal(size=(256, 256)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    assert main(["predict", str(out), str(tmp_path / "image.npy"), str(tmp_path / "p.tif"), "-q"]) == 0
    assert main(["predict", str(out), str(tmp_path / "image.npy"), str(tmp_path / "p.zarr"), "-q"]) == 0
    import zarr  # the package's output channel names reach the OME metadata

    assert [c["label"] for c in zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs["ome"]["omero"]["channels"]] \
        == [str(name) for name in load_description_names(out)]
    assert main(["diagnose", str(out), str(tmp_path / "image.npy"), "--out", str(tmp_path / "report"),
                 "--core", "64", "--ted-batches", "1", "--patch-size", "64"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())["diagnoses"][0]
    assert report["model"]["verdict"] == "tile-independent" and report["tile_mismatch"]["tm_abs"] == 0.0


def test_a_corrupt_package_is_a_one_line_error(tmp_path, capsys):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\nname: broken\n")
    with pytest.raises(CheckpointError, match=r"not a valid bioimage\.io model package"):
        load_model(broken)
    assert main(["audit", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "not a valid bioimage.io model package" in err and len(err.strip().splitlines()) == 1


def load_description_names(path):
    """The output channel names of a package, as bioimageio.spec reads them."""
    import gc
    import warnings

    from bioimageio.spec import load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the spec leaves the zip's handle to the collector
        descr = load_description(path, format_version="latest")
        names = next(axis.channel_names for axis in descr.outputs[0].axes if axis.type == "channel")
        del descr
        gc.collect()
    return names


def test_the_packages_declared_normalization_is_the_default_of_every_front_end(package, tmp_path, rng):
    """One policy in the library: a package declaring zero_mean_unit_variance gives the same prediction from
    Python's predict (default "auto") as from the CLI, and not the percentile one."""
    import yaml

    declared = tmp_path / "meanstd.zip"
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(declared, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(("rdf.yaml", "bioimageio.yaml")):
                rdf = yaml.safe_load(data)
                rdf["inputs"][0]["preprocessing"] = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]
                data = yaml.safe_dump(rdf, sort_keys=False).encode()
            zout.writestr(info, data)
    image = (rng.gamma(2.0, 30.0, size=(96, 96)) + 20).astype(np.float32)  # skewed: the two methods differ
    np.save(tmp_path / "image.npy", image)
    model = load_model(declared)
    python = predict(model, image, config=PredictConfig(core=48))
    assert main(["predict", str(declared), str(tmp_path / "image.npy"), str(tmp_path / "cli.zarr"), "--core", "48",
                 "-q"]) == 0
    import zarr

    cli = zarr.open_group(str(tmp_path / "cli.zarr"), mode="r")["0"][...]
    np.testing.assert_array_equal(cli, python)
    percentile = predict(model, image, config=PredictConfig(core=48, normalization="percentile"))
    assert np.abs(percentile - python).max() > 1e-3
