from __future__ import annotations

import pytest
import torch
from torch import nn

from seamfree.errors import CheckpointError, ConfigError, ShapeError
from seamfree.models import UNet, ViTSegmenter, load_model, model_metadata, save_model


@pytest.mark.parametrize(
    ("spatial_dims", "scale_factors", "shape", "stride"),
    [
        (2, None, (24, 40), (8, 8)),
        (3, None, (16, 8, 24), (8, 8, 8)),
        (3, [(1, 2, 2), (1, 2, 2), (2, 2, 2)], (6, 16, 24), (2, 8, 8)),
    ],
)
def test_unet_output_shape_and_stride(spatial_dims, scale_factors, shape, stride):
    net = UNet(spatial_dims, 2, 3, depth=3, features=2, norm="batch", scale_factors=scale_factors).eval()
    assert net.network_stride == stride
    with torch.no_grad():
        assert net(torch.zeros(1, 2, *shape)).shape == (1, 3, *shape)


def test_input_not_divisible_names_required_divisibility():
    net = UNet(3, 1, 1, depth=2, features=2, scale_factors=[(1, 2, 2), (2, 2, 2)])
    with pytest.raises(ShapeError, match=r"\(5, 16, 18\) must be divisible by the network stride \(2, 4, 4\)"):
        net(torch.zeros(1, 1, 5, 16, 18))
    with pytest.raises(ShapeError, match="expects input of shape"):
        net(torch.zeros(1, 16, 16))


def test_unet_rejects_bad_configuration():
    with pytest.raises(ConfigError, match="one entry per level"):
        UNet(2, 1, 1, depth=3, scale_factors=[2, 2])
    with pytest.raises(ConfigError, match="unknown normalization"):
        UNet(2, 1, 1, norm="batchnorm2")
    with pytest.raises(ConfigError, match="final_activation"):
        UNet(2, 1, 1, final_activation="relu")  # type: ignore[arg-type]


def test_final_activation():
    net = UNet(2, 1, 3, depth=1, features=2, final_activation="softmax").eval()
    out = net(torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 8, 8))


def test_vit_output_shapes_and_position_interpolation():
    net = ViTSegmenter(1, 2, img_size=32, token_size=8, embed_dim=16, depth=2, heads=2, norm="layer").eval()
    assert net.network_stride == (8, 8)
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 2, 32, 32)
        assert net(torch.zeros(1, 1, 48, 16)).shape == (1, 2, 48, 16)
    with pytest.raises(ShapeError, match="divisible by the network stride"):
        net(torch.zeros(1, 1, 30, 32))


@pytest.mark.parametrize(
    "model",
    [
        UNet(3, 1, 2, depth=2, features=2, norm="batchrenorm", scale_factors=[(1, 2, 2), 2],
             norm_options={"warmup_steps": 3, "ramp_steps": 5}),
        ViTSegmenter(1, 1, img_size=32, embed_dim=16, depth=2, heads=2, norm="group"),
    ],
    ids=["unet3d", "vit"],
)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, model):
    model.train()
    shape = (1, 1, 4, 16, 16) if isinstance(model, UNet) else (2, 1, 32, 32)
    for _ in range(2):
        model(torch.randn(shape))
    model.eval()
    path = save_model(model, tmp_path / "model.pt", metadata={"patch_size": [32, 32], "batch_size": 2})
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert model_metadata(loaded) == {"patch_size": [32, 32], "batch_size": 2}
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    if isinstance(model, UNet):
        renorm = [m for m in loaded.modules() if type(m).__name__ == "BatchRenorm3d"]
        assert renorm[0].schedule.ramp_steps == 5
        assert renorm[0].step == 2


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_foreign_models_load_as_torchscript_or_trusted_pickle(tmp_path):
    module = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(module), scripted)
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(load_model(scripted)(x), module(x))
    pickled = tmp_path / "pickled.pt"
    torch.save(module, pickled)
    with pytest.raises(CheckpointError, match="trust_code=True"):
        load_model(pickled)
    torch.testing.assert_close(load_model(pickled, trust_code=True)(x), module(x))


def test_unloadable_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_model(garbage)
    state = tmp_path / "state.pt"
    torch.save(UNet(2, 1, 1, depth=1, features=2).state_dict(), state)
    with pytest.raises(CheckpointError, match="holds only a state_dict"):
        load_model(state)
    with pytest.raises(CheckpointError, match="stores seamfree models"):
        save_model(nn.Conv2d(1, 1, 1), tmp_path / "x.pt")
