"""``seamfree fix``: tile- and batch-dependent models made seamless with unlabeled images (models built here)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from seamfree.cli.main import main
from seamfree.data.synthetic import SyntheticSpec, synthetic_image
from seamfree.errors import ConfigError, NotFixableError
from seamfree.fix import FixConfig, fix_model, fixability
from seamfree.models import UNet, load_model, save_model
from seamfree.tiling import PredictConfig, predict, predict_whole

CONDITIONS = {"object_size": 6.0, "gradient": 0.3, "empty_fraction": 0.15, "debris": 3, "region_shift": 0.15}


def _images(count: int, size: int, seed: int) -> list[np.ndarray]:
    return [synthetic_image((size, size), SyntheticSpec("nuclei", **CONDITIONS), seed=seed + i)[0]
            for i in range(count)]


def _trained(build: Callable[[], nn.Module], iterations: int = 150, seed: int = 0) -> nn.Module:
    """A network of ``build``, seeded, trained briefly on synthetic nuclei (64² patches, batch 4)."""
    torch.manual_seed(seed)
    net = build()
    pairs = [synthetic_image((128, 128), SyntheticSpec("nuclei", **CONDITIONS), seed=300 + i) for i in range(4)]
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(iterations):
        batch, target = [], []
        for _ in range(4):
            image, mask = pairs[int(rng.integers(len(pairs)))]
            y, x = rng.integers(0, 64, size=2)
            patch = image[y:y + 64, x:x + 64]
            low, high = np.percentile(image, [1, 99.8])
            batch.append((patch - low) / (high - low))
            target.append(mask[y:y + 64, x:x + 64])
        loss = nn.functional.binary_cross_entropy_with_logits(
            net(torch.from_numpy(np.stack(batch)[:, None].astype(np.float32))),
            torch.from_numpy(np.stack(target)[:, None].astype(np.float32)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _check_exact_and_faithful(original: nn.Module, fixed: nn.Module, *, activation: str = "sigmoid",
                              agreement: float = 0.9) -> None:
    image = _images(1, 256, 900)[0]
    whole = np.squeeze(predict_whole(fixed, image, activation=activation))
    tiled = np.squeeze(predict(fixed, image, config=PredictConfig(core=64, activation=activation)))
    assert np.abs(tiled - whole).max() <= 1e-5
    teacher = np.squeeze(predict_whole(original, image, activation=activation))
    assert _dice(whole > 0.5, teacher > 0.5) >= agreement


@pytest.fixture(scope="module")
def instance_unet() -> nn.Module:
    return _trained(lambda: UNet(2, 1, 1, depth=2, features=8, norm="instance"))


@pytest.mark.integration
def test_an_instance_norm_unet_becomes_exact_and_agrees(instance_unet):
    before = fixability(instance_unet)
    assert before.method == "distill" and len(before.replaceable) == 10
    result = fix_model(instance_unet, _images(4, 256, 500),
                       config=FixConfig(iterations=200, patch_size=64, check_every=50, agreement=0.9))
    assert result.method == "distill" and result.replaced == 10
    assert result.before["tile_error"] > 0.05 and result.after["tile_error"] <= 1e-5
    assert result.after["seams_detected"] is False and "seams" in result.before
    assert result.agreement is not None and result.agreement.dice >= 0.9 and result.reached
    assert fixability(result.model).method == "none"
    assert result.model.config["norm"] == "batchrenorm"
    assert [h["iteration"] for h in result.history][:1] == [50]
    _check_exact_and_faithful(instance_unet, result.model)


def test_a_batchnorm_models_train_eval_disparity_drops():
    model = _trained(lambda: UNet(2, 1, 1, depth=2, features=8, norm="batch"))
    for layer in model.modules():  # running statistics of another domain: a large disparity at batch 2
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_var.mul_(9.0)
    result = fix_model(model, _images(2, 160, 40), config=FixConfig(patch_size=64))
    assert result.method == "convert" and result.iterations == 0
    assert result.before["ted_dice"] > 0.5
    # what remains is BatchRenorm's clipping (r within [1/3, 3], d within [-5, 5]) on batches of 2 small patches
    assert result.after["ted_dice"] <= 0.05
    assert result.after["tile_error"] <= 1e-5


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_global_pooling_is_reported_as_not_fixable():
    class StyleVector(nn.Module):  # Cellpose's style: the tile's mean feature added everywhere
        def __init__(self) -> None:
            super().__init__()
            self.encode, self.pool, self.decode = nn.Conv2d(1, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), \
                nn.Conv2d(8, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = torch.relu(self.encode(x))
            return self.decode(features + self.pool(features))

    with pytest.raises(NotFixableError, match=r"AdaptiveAvgPool2d.*global context"):
        fix_model(StyleVector(), _images(1, 96, 1))
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4)))
    with pytest.raises(NotFixableError, match="TorchScript"):
        fix_model(scripted, _images(1, 96, 1))


def test_fix_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="iterations must be a positive integer"):
        FixConfig(iterations=0)
    with pytest.raises(ConfigError, match="agreement must be a Dice"):
        FixConfig(agreement=1.5)
    with pytest.raises(ConfigError, match="at least one unlabeled image"):
        fix_model(UNet(2, 1, 1, depth=1, features=2, norm="instance"), [])


@pytest.mark.slow
def test_a_groupnorm_unet_is_fixed():
    net = _trained(lambda: UNet(2, 1, 1, depth=2, features=8, norm="group"), iterations=200)
    result = fix_model(net, _images(4, 256, 600), config=FixConfig(iterations=200, patch_size=64, check_every=100,
                                                                   agreement=0.9))
    assert result.after["tile_error"] <= 1e-5
    _check_exact_and_faithful(net, result.model, activation="sigmoid")


@pytest.mark.slow
def test_a_monai_basic_unet_with_instance_norm_is_fixed():
    from monai.networks.nets import BasicUNet

    net = _trained(lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 16, 32, 8),
                                     norm=("instance", {"affine": True})), iterations=200)
    assert fixability(net).method == "distill"
    result = fix_model(net, _images(4, 256, 700), config=FixConfig(iterations=300, patch_size=64, check_every=100,
                                                                   agreement=0.9, activation="sigmoid"))
    assert result.after["tile_error"] <= 1e-5
    _check_exact_and_faithful(net, result.model, activation="sigmoid", agreement=0.85)


def test_the_cli_writes_the_fixed_model_and_its_report(instance_unet, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    model_path = save_model(instance_unet, tmp_path / "in.pt")
    images = []
    (tmp_path / "unlabeled").mkdir()
    for i, image in enumerate(_images(2, 160, 800)):
        images.append(str(tmp_path / "unlabeled" / f"u{i}.tif"))
        tifffile.imwrite(images[-1], image)
    out, report = tmp_path / "fixed.pt", tmp_path / "report"
    argv = ["fix", str(model_path), *images, "--out", str(out), "--iterations", "60", "--patch-size", "64",
            "--report", str(report), "-q"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    fixed = load_model(out)
    assert fixed.config["norm"] == "batchrenorm" and fixed.seamfree_metadata["fixed_from"] == str(model_path)
    payload = json.loads((report / "fix.json").read_text())
    assert payload["method"] == "distill" and payload["after"]["tile_error"] <= 1e-5
    assert "Agreement with the original" in (report / "fix.html").read_text()
    # nothing is replaced without --overwrite; a missing image is one line, exit 2
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["fix", str(model_path), str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # an agreement that cannot be reached: the best model is written, exit 3 when asked
    # a folder of images; BatchNorm instead of BatchRenorm
    strict = ["fix", str(model_path), str(tmp_path / "unlabeled"), "--out", str(tmp_path / "strict.pt"),
              "--iterations", "20", "--patch-size", "64", "--agreement", "1.0", "--require-agreement", "--to",
              "batch", "-q"]
    assert main(strict) == 3 and (tmp_path / "strict.pt").exists()
    assert load_model(tmp_path / "strict.pt").config["norm"] == "batch"
