"""Trust, round three (issue 36), for model files: no code from a model file without consent (a bioimage.io
``import_from`` that is not a network class, TorchScript whose ``__setstate__`` writes a file), and no halo
from another model (the measurement cache keyed by structure, floored by the convolutions' reach, signed)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from seamfree.cli.main import main
from seamfree.errors import CheckpointError
from seamfree.models import UNet, load_model
from seamfree.models.consent import check_architecture, check_torchscript
from seamfree.models.describe import clear_model_cache, describe_model
from seamfree.models.field_cache import cache_folder
from seamfree.tiling import PredictConfig, predict, predict_whole

pytestmark = pytest.mark.filterwarnings("ignore")  # bioimageio/pydantic deprecation chatter is not ours


def _evil_package(package, out, *, keep_torchscript: bool):
    with zipfile.ZipFile(package) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(("rdf.yaml", "bioimageio.yaml")):
                rdf = yaml.safe_load(data)
                rdf["weights"]["pytorch_state_dict"]["architecture"] = {
                    "import_from": "subprocess", "callable": "run",
                    "kwargs": {"args": ["touch", str(out.parent / "PWNED")]}}
                if not keep_torchscript:
                    rdf["weights"].pop("torchscript", None)
                data = yaml.safe_dump(rdf, sort_keys=False).encode()
            zout.writestr(info, data)
    return out


def test_a_package_architecture_outside_the_allow_list_runs_nothing(tmp_path, capsys):
    pytest.importorskip("bioimageio.core")
    from seamfree.models.bioimageio import export_bioimageio

    torch.manual_seed(0)
    package = export_bioimageio(UNet(2, 1, 1, depth=2, features=4).eval(), tmp_path / "pkg.zip")
    both = _evil_package(package, tmp_path / "evil.zip", keep_torchscript=True)
    only_state = _evil_package(package, tmp_path / "evil-state.zip", keep_torchscript=False)
    model = load_model(both)  # the torchscript weights, which pass the static check, are used instead
    assert model.seamfree_package.weights == "torchscript"
    with pytest.raises(CheckpointError, match=r"subprocess\.run.*trust_code=True"):
        load_model(only_state)
    image = tmp_path / "img.npy"
    np.save(image, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    assert main(["audit", str(only_state), "--static"]) == 2
    assert "subprocess.run" in capsys.readouterr().err
    assert main(["predict", str(only_state), str(image), str(tmp_path / "o.zarr"), "-q"]) == 2
    assert not (tmp_path / "PWNED").exists()
    check_architecture("monai.networks.nets", "UNet", "x")  # named network classes need no consent
    with pytest.raises(CheckpointError, match=r"os\.system"):
        check_architecture("os", "system", "x")


class _WritesAFile(nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool, str]:
        return (self.w, self.training, self.target)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool, str]) -> None:
        mapped = torch.from_file(state[2], shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(65)
        self.w = state[0] + mapped.float().sum() * 0
        self.training = state[1]
        self.target = state[2]


def test_torchscript_that_writes_a_file_at_load_needs_consent(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("hello")
    path = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_WritesAFile(str(victim))), str(path))
    victim.write_text("hello")  # scripting ran nothing; the archive's __setstate__ would
    with pytest.raises(CheckpointError, match=r"__setstate__.*from_file.*--trust-code"):
        load_model(path)
    assert main(["audit", str(path), "--static"]) == 2
    assert victim.read_text() == "hello"
    load_model(path, trust_code=True)  # consent: it runs (the payload is real)
    assert victim.read_text().startswith("AAAA")
    plain = tmp_path / "plain.pt"  # ordinary scripted and traced networks pass the check
    torch.jit.save(torch.jit.script(_Dilated(2).eval()), str(plain))
    check_torchscript(plain, "plain")
    net = UNet(2, 1, 1, depth=2, features=4).eval()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 16, 16)), str(plain))
    check_torchscript(plain, "traced")


class _Dilated(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=d, dilation=d)
        self.c2 = nn.Conv2d(8, 8, 3, padding=d, dilation=d)
        self.c3 = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def test_models_with_equal_weights_and_another_dilation_keep_their_own_halo(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAMFREE_CACHE", str(tmp_path / "cache"))
    image = np.random.default_rng(0).normal(size=(192, 192)).astype(np.float32)
    config = PredictConfig(core=32, activation="none")
    for d in (1, 4):
        torch.manual_seed(0)
        net = _Dilated(d).eval()  # the same parameter bytes for both dilations
        clear_model_cache()  # a new process, as far as the in-memory cache goes
        assert np.abs(predict(net, image, config=config) - predict_whole(net, image, activation="none")).max() < 1e-5
        assert describe_model(net, probe=False).receptive_field.radius[0] >= 2 * d


def test_an_edited_cache_file_is_not_believed(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAMFREE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = _Dilated(4).eval()
    clear_model_cache()
    radius = describe_model(net, probe=False).receptive_field.radius
    for path in cache_folder().glob("*.json"):  # an attacker with write access to a shared cache
        stored = json.loads(path.read_text())
        if "radius" in stored["data"]:
            stored["data"]["radius"] = stored["data"]["effective_radius"] = [0, 0]
            path.write_text(json.dumps(stored))
    clear_model_cache()
    again = describe_model(net, probe=False)
    assert again.receptive_field.radius == radius and not any("cache" in n for n in again.notes)


def test_the_static_floor_overrules_a_signed_cached_radius_below_it(tmp_path, monkeypatch):
    from seamfree.models import field_cache
    from seamfree.models.identity import static_reach

    assert static_reach(_Dilated(4), 2) == (4, 4)
    assert static_reach(UNet(2, 1, 1, depth=2, features=4), 2) == (1, 1)
    monkeypatch.setenv("SEAMFREE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = _Dilated(4).eval()
    clear_model_cache()
    radius = describe_model(net, probe=False).receptive_field.radius
    for path in cache_folder().glob("*.json"):  # a wrong entry with a valid signature (a bug, not an attacker)
        data = json.loads(path.read_text())["data"]
        if "radius" in data:
            data["radius"] = data["effective_radius"] = [1, 1]
            signature = field_cache._signature(field_cache._secret(), path.name, data)
            path.write_text(json.dumps({"data": data, "signature": signature}))
    clear_model_cache()
    again = describe_model(net, probe=False)
    assert again.receptive_field.radius == radius and not any("cache" in n for n in again.notes)
