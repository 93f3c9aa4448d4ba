"""Bring your own model: networks nobody here wrote — MONAI (scripted, traced), a torch-em-style U-Net, a
Cellpose-style net with a style vector, a custom normalization — described, audited, predicted and diagnosed
from the CLI with no flag beyond what their weights cannot tell."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from foreign_models import CellposeStyleNet, ChannelMixer, CustomNormNet, NoConvolution, TorchEmStyleUNet
from torch import nn

from seamfree.cli.main import main
from seamfree.errors import ConfigError, ShapeError
from seamfree.models import clear_model_cache, describe_model, load_model
from seamfree.tiling import PredictConfig, predict, predict_whole

monai = pytest.importorskip("monai")

from monai.networks.nets import BasicUNet, UNet  # noqa: E402


def _compiled(net: nn.Module, how: str, example_shape: tuple[int, ...] = (1, 1, 64, 64)) -> nn.Module:
    net = net.eval()
    if how == "eager":
        return net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates making TorchScript
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if how == "script":
            return torch.jit.script(net)
        return torch.jit.trace(net, torch.zeros(example_shape))


def _save(net: nn.Module, path, how: str = "script", example_shape=(1, 1, 64, 64)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(_compiled(net, how, example_shape), str(path))
    return path


def _basic_unet() -> nn.Module:
    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 16, 4))


def _batch_unet() -> nn.Module:
    torch.manual_seed(0)
    net = UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), norm="batch")
    with torch.no_grad():  # non-trivial running statistics, as a trained net has
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture
def image(tmp_path, rng):
    from seamfree.data import SyntheticSpec, synthetic_image

    picture, _ = synthetic_image((384, 384), SyntheticSpec("nuclei", object_size=6), seed=3)
    path = tmp_path / "image.npy"
    np.save(path, picture.astype(np.float32))
    return path


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_monai_networks_are_described_from_their_weights(how):
    instance = describe_model(_compiled(_basic_unet(), how))
    batch = describe_model(_compiled(_batch_unet(), how))
    assert (instance.spatial_dims, instance.in_channels, instance.out_channels) == (2, 1, 1)
    assert instance.network_stride == (16, 16) and batch.network_stride == (4, 4)
    assert instance.verdict == "tile-dependent" and instance.probe is not None and instance.probe.tile_dependent
    assert batch.verdict == "tile-independent" and batch.probe is not None and not batch.probe.tile_dependent
    assert "static audit" in instance.evidence and "probe" in batch.evidence
    # compiled models cannot be linearized: their support is estimated, and says so
    assert batch.receptive_field.linearized == (how == "eager")
    eager = describe_model(_batch_unet())
    assert all(h >= e for h, e in zip(batch.receptive_field.halo, eager.receptive_field.halo))


def test_the_description_is_cached_by_the_parameters():
    clear_model_cache()
    net = _basic_unet().eval()
    forwards = []
    net.register_forward_pre_hook(lambda module, args: forwards.append(tuple(args[0].shape)))
    first = describe_model(net)
    assert forwards  # geometry, receptive field and tile probe ran the model
    forwards.clear()
    assert describe_model(net) == first and describe_model(_basic_unet().eval()) == first  # same weights
    assert forwards == []  # ... and nothing ran again
    with torch.no_grad():
        next(net.parameters()).add_(0.5)  # an optimizer step, a load_state_dict: in place
    assert describe_model(net).digest != first.digest and forwards


def test_torch_em_style_unet_is_tile_dependent_by_its_instance_norms():
    info = describe_model(TorchEmStyleUNet())
    assert info.network_stride == (4, 4) and info.audit.verdict == "tile-dependent"
    assert sum(layer.type == "InstanceNorm2d" for layer in info.audit.layers) == 10
    assert info.verdict == "tile-dependent" and info.probe is not None and info.probe.tile_dependent


def test_cellpose_style_vector_is_caught_by_the_probe_and_outputs_are_chosen():
    net = CellposeStyleNet().eval()
    with pytest.raises(ConfigError, match=r"tuple of 2 outputs \(\[0\] tensor \(1, 3, .*\[1\] tensor \(1, 16\)"):
        describe_model(net)
    info = describe_model(net, output=0)
    assert (info.in_channels, info.out_channels, info.output) == (2, 3, 0)
    # BatchNorm layers only, as far as the layers and the graph's known operations show ...
    assert info.audit.verdict == "tile-independent"
    # ... but the style vector averages the whole tile: the probe decides
    assert info.verdict == "tile-dependent" and info.evidence.startswith("the empirical probe")
    with pytest.raises(ConfigError, match="output 2 does not exist"):
        describe_model(net, output=2)


def test_a_custom_normalization_is_unknown_statically_and_tile_dependent_by_the_probe():
    info = describe_model(CustomNormNet())
    assert info.audit.verdict == "unknown"
    assert [layer.type for layer in info.audit.layers] == ["MedianNorm"]
    assert info.verdict == "tile-dependent" and info.evidence.startswith("the empirical probe")


def test_geometry_that_cannot_be_read_is_probed_or_asked_for():
    assert describe_model(NoConvolution(), probe=False).geometry_from == "probing"
    with pytest.raises(ConfigError, match="--spatial-dims, --in-channels"):
        describe_model(ChannelMixer())
    info = describe_model(ChannelMixer(), in_channels=5)
    assert (info.spatial_dims, info.in_channels, info.verdict) == (2, 5, "tile-independent")
    with pytest.raises(ShapeError, match=r"in_channels=3 .*--in-channels"):
        describe_model(_basic_unet(), in_channels=3)


def test_scripted_monai_networks_predict_and_diagnose_from_the_cli(tmp_path, image, capsys):
    instance = _save(_basic_unet(), tmp_path / "instance.pt", "script")
    batch = _save(_batch_unet(), tmp_path / "batch.pt", "trace")
    reports = {}
    for name, path in (("instance", instance), ("batch", batch)):
        code = main(["diagnose", str(path), str(image), "--out", str(tmp_path / name), "--core", "64",
                     "--ted-batches", "1", "--patch-size", "64"])
        assert code == 0, capsys.readouterr().err
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())["diagnoses"][0]
    tm = {name: report["tile_mismatch"]["tm_abs"] for name, report in reports.items()}
    assert tm["instance"] > 10 * tm["batch"] and tm["instance"] > 1e-3, tm
    assert reports["instance"]["model"]["verdict"] == "tile-dependent"
    assert reports["batch"]["model"]["verdict"] == "tile-independent"
    assert reports["batch"]["model"]["kind"] == "torchscript"

    out = tmp_path / "batch.tif"
    assert main(["predict", str(batch), str(image), str(out), "--core", "64", "-q"]) == 0
    import tifffile

    tiled = tifffile.imread(out)
    whole = predict_whole(load_model(batch), str(image))
    assert np.abs(tiled.reshape(whole.shape) - whole).max() <= 1e-5


def test_tuple_outputs_from_the_cli(tmp_path, image, capsys):
    torch.manual_seed(0)
    path = _save(CellposeStyleNet(in_channels=1), tmp_path / "cellpose.pt", "script")
    out = tmp_path / "flows.zarr"
    assert main(["predict", str(path), str(image), str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "tuple of 2 outputs" in err and "--output INDEX" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["predict", str(path), str(image), str(out), "-q", "--output", "0"]) == 0
    import zarr

    stored = np.asarray(zarr.open_group(str(out), mode="r")["0"])
    assert stored.shape == (3, 384, 384)
    assert main(["predict", str(path), str(image), str(tmp_path / "x.zarr"), "-q", "--output", "7"]) == 2
    assert "output 7 does not exist" in capsys.readouterr().err


def test_bad_model_options_exit_with_2_and_one_line(tmp_path, image, capsys):
    mixer = _save(ChannelMixer(), tmp_path / "mixer.pt", "script")
    unet = _save(_basic_unet(), tmp_path / "unet.pt", "script")
    for argv, expected in (
        (["audit", str(mixer)], "--spatial-dims"),
        (["audit", str(unet), "--in-channels", "3"], "--in-channels"),
        (["predict", str(unet), str(image), str(tmp_path / "o.zarr"), "--output", "flows"], "selects nothing"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


def test_audit_command_reports_the_verdict_and_its_evidence(tmp_path, capsys):
    path = _save(_basic_unet(), tmp_path / "unet.pt", "trace")
    assert main(["audit", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict: tile-dependent") and "evidence: the static audit" in out
    assert "network stride (16, 16)" in out and "estimated on the compiled model" in out
    assert main(["audit", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["probe"]["tile_dependent"] is True


def test_predict_with_a_tuple_output_model_in_python():
    net = CellposeStyleNet(in_channels=1).eval()
    image = np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32)
    tiled = predict(net, image, config=PredictConfig(core=32, model_output=0, activation="sigmoid"))
    assert tiled.shape == (3, 96, 96) and tiled.min() >= 0.0 and tiled.max() <= 1.0


def test_a_torch_export_program_is_described_and_predicts_exactly(tmp_path):
    net = _batch_unet().eval()
    height, width = torch.export.Dim("height", min=4, max=1024), torch.export.Dim("width", min=4, max=1024)
    program = torch.export.export(net, (torch.zeros(1, 1, 64, 64),),
                                  dynamic_shapes={"x": {2: 4 * height, 3: 4 * width}})
    path = tmp_path / "unet.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(Exception, match="trust_code=True"):
        load_model(path)  # unpickling runs code from the file: only with consent
    exported = load_model(path, trust_code=True)
    info = describe_model(exported)
    assert (info.kind, info.network_stride, info.verdict) == ("export", (4, 4), "tile-independent")
    # the module refuses mode switches and its batch size is fixed at 1: both are handled
    image = np.random.default_rng(0).normal(size=(200, 200)).astype(np.float32)
    tiled = predict(exported, image, config=PredictConfig(core=64))
    assert np.abs(tiled - predict_whole(exported, image)).max() <= 1e-5
