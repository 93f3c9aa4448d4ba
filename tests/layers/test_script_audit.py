"""The audit of models nobody here wrote: TorchScript (scripted, traced), MONAI networks, functional global
context. An ``isinstance`` audit calls all of these "no normalization"; these tests pin the truthful verdicts."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from seamfree.layers import audit_norms

monai = pytest.importorskip("monai")

from monai.networks.nets import BasicUNet, UNet  # noqa: E402


def _compiled(net: nn.Module, how: str, dims: int = 2) -> nn.Module:
    """Return ``net`` as a user would hand it over: eager, or saved as scripted or traced TorchScript."""
    net = net.eval()
    if how == "eager":
        return net
    with warnings.catch_warnings():
        # torch 2.13 deprecates making TorchScript; users' existing TorchScript files are what is audited here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # MONAI's data-dependent padding checks
        if how == "script":
            return torch.jit.script(net)
        return torch.jit.trace(net, torch.zeros((1, 1, *(32,) * dims)))


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_monai_basic_unet_instance_norms_are_all_tile_dependent(how):
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 4, 4, 4, 4))
    audit = audit_norms(_compiled(net, how))
    assert audit.verdict == "tile-dependent"
    norms = [layer for layer in audit.layers if layer.type == "InstanceNorm2d"]
    assert len(norms) == 18 and all(layer.tile_dependent and layer.statistics == "per-tile" for layer in norms)
    assert len(audit.layers) == 18  # and nothing else is reported


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_monai_unet_with_batch_norm_is_tile_independent(how):
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), norm="batch")
    audit = audit_norms(_compiled(net, how))
    assert audit.verdict == "tile-independent"
    assert audit.counts == {"BatchNorm2d": 4} and not audit.tile_dependent_layers


class StyleNet(nn.Module):
    """Cellpose-3-like: a global average of the features (the "style") is fed back into the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Conv2d(1, 8, 3, padding=1)
        self.style = nn.Linear(8, 8)
        self.decode = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.encode(x))
        style = self.style(features.mean(dim=(2, 3)))
        return self.decode(features + style[:, :, None, None])


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_a_functional_global_style_vector_is_tile_dependent(how):
    audit = audit_norms(_compiled(StyleNet(), how))
    assert audit.verdict == "tile-dependent"
    (layer,) = audit.tile_dependent_layers
    assert layer.type == "aten::mean" and "global context" in layer.note


def test_functional_instance_norm_in_a_traced_graph_is_found():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.instance_norm(self.conv(x))

    audit = audit_norms(_compiled(Functional(), "trace"))
    assert audit.verdict == "tile-dependent" and audit.layers[0].type == "aten::instance_norm"


def test_a_custom_normalization_is_never_called_no_normalization():
    class TileStandardizer(nn.Module):  # a normalization the audit has never heard of
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean()) / (x.std() + 1e-6)

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), TileStandardizer(), nn.Conv2d(4, 1, 1)).eval()
    audit = audit_norms(net)
    assert audit.verdict == "unknown"
    assert [layer.statistics for layer in audit.layers] == ["unknown"]


def test_a_model_that_cannot_be_traced_and_shows_no_norm_is_unknown():
    class Stubborn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.abs().sum()) == 0.0:
                raise ValueError("refuses all-zero inputs")
            return self.conv(x)

    audit = audit_norms(Stubborn().eval())
    assert audit.verdict == "unknown" and "could not be traced" in audit.summary


def test_the_cli_audits_a_torchscript_file_of_a_monai_network(tmp_path, capsys):
    from seamfree.cli.main import main

    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 4, 4, 4, 4))
    path = tmp_path / "basic_unet.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates writing TorchScript
        torch.jit.save(_compiled(net, "script"), str(path))
    assert main(["audit", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict: tile-dependent") and out.count("DEPENDS ON TILE") == 18
    assert "no normalization" not in out
