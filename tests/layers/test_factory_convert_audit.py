from __future__ import annotations

import pytest
import torch
from torch import nn

from seamfree.errors import ConfigError
from seamfree.layers import (
    NORM_NAMES,
    BatchRenorm2d,
    audit_norms,
    convert_norm,
    create_norm_layer,
    get_norm_layer,
    recalibrate_norm,
)
from seamfree.models import UNet

EXPECTED_VERDICT = {
    "batch": "tile-independent",
    "batchrenorm": "tile-independent",
    "instance": "tile-dependent",
    "instance_tracked": "tile-independent",
    "group": "tile-dependent",
    "layer": "tile-independent",
    "layer_spatial": "tile-dependent",
    "none": "no-normalization",
}


@pytest.mark.parametrize("name", NORM_NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_factory_builds_every_norm(name, spatial_dims):
    layer = create_norm_layer(name, 8, spatial_dims)
    x = torch.randn(2, 8, *([6] * spatial_dims))
    assert layer(x).shape == x.shape
    assert callable(get_norm_layer(name, spatial_dims))


def test_unknown_norm_lists_known_names():
    with pytest.raises(ConfigError, match=r"unknown normalization 'batchnrom' \(did you mean 'batch"):
        get_norm_layer("batchnrom")
    with pytest.raises(ConfigError, match="known names: batch, batchrenorm, instance"):
        create_norm_layer("weird", 4)


@pytest.mark.parametrize("name", NORM_NAMES)
def test_audit_verdict_for_every_factory_name(name):
    audit = audit_norms(UNet(2, 1, 1, depth=1, features=4, norm=name))
    assert audit.verdict == EXPECTED_VERDICT[name]
    if EXPECTED_VERDICT[name] == "tile-dependent":
        assert len(audit.tile_dependent_layers) == 6  # two per block, three blocks
        assert audit.layers[0].name == "encoders.0.1"


def test_audit_monai_and_torch_em_style_blocks():
    # MONAI's UnetResBlock / torch-em's ConvBlock are plain torch layers: audit them as such.
    monai_like = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True),
                               nn.LeakyReLU(0.01), nn.Conv3d(4, 4, 3, padding=1), nn.InstanceNorm3d(4))
    torch_em_like = nn.Sequential(nn.GroupNorm(4, 1 * 4), nn.Conv2d(4, 4, 3), nn.ReLU())
    tracked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, track_running_stats=True))
    untracked_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert audit_norms(monai_like).verdict == "tile-dependent"
    assert audit_norms(torch_em_like).layers[0].statistics == "per-tile"
    assert audit_norms(tracked).verdict == "tile-independent"
    assert audit_norms(untracked_bn).layers[0].note.startswith("track_running_stats=False")
    assert audit_norms(nn.Sequential(nn.LayerNorm([8, 8]))).verdict == "tile-dependent"


def test_audit_reports_unknown_norm_like_modules():
    class FancyNorm(nn.Module):
        def forward(self, x):
            return x / x.norm()

    audit = audit_norms(nn.Sequential(nn.Conv2d(1, 1, 3), FancyNorm()))
    assert audit.verdict == "unknown"
    assert audit.layers[0].type == "FancyNorm"
    assert audit.layers[0].tile_dependent is None
    assert audit.to_dict()["layers"][0]["statistics"] == "unknown"


def test_audit_flags_attention_as_global_context():
    from seamfree.models import ViTSegmenter

    audit = audit_norms(ViTSegmenter(1, 1, img_size=32, embed_dim=16, depth=2, heads=2, norm="batch"))
    assert audit.verdict == "tile-dependent"
    assert {layer.type for layer in audit.tile_dependent_layers} == {"SelfAttention"}


def _trained_bn_unet() -> UNet:
    torch.manual_seed(0)
    model = UNet(2, 1, 2, depth=2, features=4, norm="batch")
    for _ in range(3):
        model(torch.randn(2, 1, 16, 16) * 2 + 1)
    return model.eval()


def test_convert_batchnorm_to_batchrenorm_keeps_eval_outputs():
    model = _trained_bn_unet()
    converted = convert_norm(model, "batchrenorm")
    assert not any(isinstance(m, nn.BatchNorm2d) and not isinstance(m, BatchRenorm2d)
                   for m in converted.modules())
    assert sum(isinstance(m, BatchRenorm2d) for m in converted.modules()) == 10
    assert converted.config["norm"] == "batchrenorm"
    assert model.config["norm"] == "batch"  # input untouched
    x = torch.randn(2, 1, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)
    renorm = next(m for m in converted.modules() if isinstance(m, BatchRenorm2d))
    assert renorm.step == renorm.schedule.warmup_steps  # fine-tuning renormalizes from the start
    assert not converted.training


def test_convert_rejects_targets_without_running_statistics():
    with pytest.raises(ConfigError, match="retrain with it instead"):
        convert_norm(_trained_bn_unet(), "instance")


def test_recalibrate_moves_running_statistics_to_target_data():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Dropout(0.5)).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 2, 16, 16, generator=generator) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1)
               + torch.tensor([5.0, -3.0]).view(1, 2, 1, 1) for _ in range(8)]
    weight_before = model[0].weight.clone()
    recalibrate_norm(model, batches)
    torch.testing.assert_close(model[0].running_mean, torch.tensor([5.0, -3.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(model[0].running_var, torch.tensor([4.0, 0.25]), atol=0.1, rtol=0.03)
    assert not model.training and not model[0].training
    torch.testing.assert_close(model[0].weight, weight_before)
    assert model[0].momentum == 0.1


@pytest.mark.parametrize("layer", [
    lambda: nn.BatchNorm2d(2, momentum=0.1),
    lambda: nn.InstanceNorm2d(2, affine=True, track_running_stats=True),  # torch turns momentum None into 0.0
    lambda: BatchRenorm2d(2, momentum=0.01),
], ids=["batch", "instance_tracked", "batchrenorm"])
def test_recalibrated_statistics_are_the_exact_average_over_the_batches(layer):
    """Each batch weighs the same, for every tracked norm: five batches of means 1..5 give running mean 3."""
    model = nn.Sequential(layer()).eval()
    batches = [torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(k)) + (k + 1) for k in range(5)]
    recalibrate_norm(model, batches)
    norm = model[0]
    if isinstance(norm, nn.InstanceNorm2d):  # per-instance statistics, averaged over the instances of a batch
        expected = torch.stack([b.mean(dim=(2, 3)).mean(dim=0) for b in batches]).mean(dim=0)
    else:
        expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(dim=0)
    torch.testing.assert_close(norm.running_mean, expected, atol=1e-5, rtol=0)
    assert abs(float(norm.running_mean.mean()) - 3.0) < 0.05
    assert float(norm.running_var.mean()) == pytest.approx(1.0, abs=0.1)
    assert norm.momentum == layer().momentum  # restored


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "batchrenorm", "instance_tracked"])
def test_recalibrated_statistics_equal_those_computed_directly_on_the_same_features(norm, dims):
    """Both norm layers of conv → norm → ReLU → conv → norm: the recalibrated running mean and variance equal the
    average over the batches of the statistics of the features reaching each layer, computed here with functional
    ops (the first layer's input is conv1(x); the second's is conv2(ReLU(conv1(x) normalized by its own batch or
    instance statistics, affine included))), to 1e-5."""
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    torch.manual_seed(0)
    model = nn.Sequential(conv(1, 3, 3, padding=1), create_norm_layer(norm, 3, dims), nn.ReLU(),
                          conv(3, 2, 3, padding=1), create_norm_layer(norm, 2, dims)).eval()
    with torch.no_grad():
        for layer in (model[1], model[4]):
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.uniform_(-1.0, 1.0)
    shape = (3, 1, 12, 12) if dims == 2 else (3, 1, 8, 8, 8)
    batches = [torch.randn(shape, generator=torch.Generator().manual_seed(k)) * (k + 1) + 3 * k for k in range(4)]
    instance = norm == "instance_tracked"
    spatial = tuple(range(2, dims + 2))

    def statistics(features):
        if instance:
            return features.mean(dim=spatial).mean(0), features.var(dim=spatial, unbiased=True).mean(0)
        return features.mean(dim=(0, *spatial)), features.var(dim=(0, *spatial), unbiased=True)

    def normalized(features, layer):
        axes = spatial if instance else (0, *spatial)
        mean, var = features.mean(dim=axes, keepdim=True), features.var(dim=axes, unbiased=False, keepdim=True)
        view = (1, -1) + (1,) * dims
        return (features - mean) / torch.sqrt(var + layer.eps) * layer.weight.view(view) + layer.bias.view(view)

    expected = [[], []]
    with torch.no_grad():
        for x in batches:
            first = model[0](x)
            second = model[3](torch.relu(normalized(first, model[1])))
            expected[0].append(statistics(first))
            expected[1].append(statistics(second))
    recalibrate_norm(model, batches)
    for layer, stats in zip((model[1], model[4]), expected):
        torch.testing.assert_close(layer.running_mean, torch.stack([m for m, _ in stats]).mean(0), atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(layer.running_var, torch.stack([v for _, v in stats]).mean(0), atol=1e-5,
                                   rtol=1e-5)
    assert not model.training


def test_recalibrate_keeps_renorm_schedule_and_mode():
    model = UNet(2, 1, 1, depth=1, features=2, norm="batchrenorm").train()
    for _ in range(3):
        model(torch.randn(1, 1, 8, 8))
    recalibrate_norm(model, [torch.randn(1, 1, 8, 8)])
    assert model.training
    assert all(m.step == 3 for m in model.modules() if isinstance(m, BatchRenorm2d))


def test_recalibrate_without_batches_leaves_model_unchanged():
    model = _trained_bn_unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="received no batches"):
        recalibrate_norm(model, [])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    with pytest.raises(ConfigError, match="no normalization layers with running statistics"):
        recalibrate_norm(nn.Sequential(nn.Conv2d(1, 1, 1)), [torch.zeros(1, 1, 2, 2)])


def test_recalibrated_batchrenorm_normalizes_with_batch_statistics_alone_during_the_pass():
    """Downstream layers see features normalized by each batch's own statistics, as in BatchNorm's recalibration,
    not r/d-corrected towards the running statistics being re-estimated (here: reset to 0 and 1)."""
    model = nn.Sequential(BatchRenorm2d(2, warmup_steps=0, ramp_steps=0), BatchRenorm2d(2, warmup_steps=0,
                                                                                         ramp_steps=0)).eval()
    steps_before = [int(m.num_batches_tracked) for m in model]
    batches = [torch.randn(4, 2, 16, 16, generator=torch.Generator().manual_seed(k)) * 3 + 5 for k in range(4)]
    recalibrate_norm(model, batches)
    first, second = model
    torch.testing.assert_close(first.running_mean, torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(second.running_mean, torch.zeros(2), atol=1e-5, rtol=0)  # normalized: mean 0
    torch.testing.assert_close(second.running_var, torch.ones(2), atol=2e-3, rtol=0)  # var 1 (unbiased: n/(n-1))
    assert [int(m.num_batches_tracked) for m in model] == steps_before and not first._batch_statistics_only
