from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from seamfree.errors import ConfigError, ShapeError
from seamfree.layers import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, RenormSchedule, set_renorm_schedule

PAIRS = [
    (BatchRenorm1d, nn.BatchNorm1d, (4, 3, 10)),
    (BatchRenorm2d, nn.BatchNorm2d, (4, 3, 6, 5)),
    (BatchRenorm3d, nn.BatchNorm3d, (2, 3, 4, 5, 3)),
]


def _plain(cls: type[nn.Module]) -> nn.Module:
    """A BatchRenorm that is plain BatchNorm forever (r_max=1, d_max=0)."""
    return cls(3, momentum=0.1, r_max=1.0, d_max=0.0, warmup_steps=0, ramp_steps=0)


@pytest.mark.parametrize(("renorm_cls", "bn_cls", "shape"), PAIRS)
def test_unclipped_bounds_equal_batchnorm_in_training_and_eval(renorm_cls, bn_cls, shape):
    renorm, bn = _plain(renorm_cls), bn_cls(3, momentum=0.1)
    with torch.no_grad():
        for layer in (renorm, bn):
            layer.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.3, 2.0]))
    for step in range(3):
        x = torch.randn(shape) * (step + 1) + step
        xr, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        yr, yb = renorm(xr), bn(xb)
        torch.testing.assert_close(yr, yb, rtol=1e-5, atol=1e-6)
        grad = torch.randn_like(yr)
        yr.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(xr.grad, xb.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(renorm.weight.grad, bn.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(renorm.bias.grad, bn.bias.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(renorm.running_mean, bn.running_mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(renorm.running_var, bn.running_var, rtol=1e-5, atol=1e-7)
    renorm.eval()
    bn.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(renorm(x), bn(x), rtol=1e-5, atol=1e-6)


def test_training_output_equals_eval_output_when_not_clipped():
    layer = BatchRenorm2d(3, r_max=1e6, d_max=1e6, warmup_steps=0, ramp_steps=0, momentum=0.0)
    x = torch.randn(2, 3, 8, 8) * 3 + 1
    # With the running statistics equal to this batch's, r = 1 and d = 0 exactly; then move them away:
    # unclipped r, d make the train-mode output equal the eval-mode output for any running statistics.
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.5, 9.0]))
        layer.weight.copy_(torch.tensor([1.2, 0.7, -0.4]))
    train_out = layer.train()(x)
    eval_out = layer.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=1e-4, atol=1e-5)


def test_r_and_d_carry_no_gradient():
    # y = w * ((x - mu)/sigma * r + d) + b with r, d constants: d y / d x sums to zero over the batch
    # for a constant upstream gradient, exactly as in BatchNorm (the mean is subtracted).
    layer = BatchRenorm2d(1, warmup_steps=0, ramp_steps=0)
    with torch.no_grad():
        layer.running_var.fill_(4.0)
        layer.running_mean.fill_(3.0)
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    layer(x).sum().backward()
    assert abs(float(x.grad.sum())) < 1e-5


def test_schedule_values_at_chosen_steps():
    schedule = RenormSchedule(warmup_steps=100, ramp_steps=200, r_max=3.0, d_max=5.0)
    assert schedule.bounds(0) == (1.0, 0.0)
    assert schedule.bounds(99) == (1.0, 0.0)
    assert schedule.bounds(100) == (1.0, 0.0)
    assert schedule.bounds(200) == pytest.approx((2.0, 2.5))
    assert schedule.bounds(300) == (3.0, 5.0)
    assert schedule.bounds(10_000) == (3.0, 5.0)


def test_schedule_advances_only_in_training_and_survives_save_load():
    layer = BatchRenorm2d(2, warmup_steps=2, ramp_steps=4)
    for _ in range(4):
        layer(torch.randn(2, 2, 4, 4))
    layer.eval()(torch.randn(2, 2, 4, 4))
    assert layer.step == 4
    assert layer.current_bounds() == pytest.approx((2.0, 2.5))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    restored = BatchRenorm2d(2, warmup_steps=2, ramp_steps=4)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert restored.step == 4
    assert restored.current_bounds() == layer.current_bounds()


def test_state_dict_keys_equal_batchnorm_and_batchnorm_checkpoint_loads():
    bn = nn.BatchNorm3d(5)
    bn(torch.randn(2, 5, 3, 3, 3))
    renorm = BatchRenorm3d(5)
    assert list(renorm.state_dict()) == list(bn.state_dict())
    renorm.load_state_dict(bn.state_dict())  # strict
    torch.testing.assert_close(renorm.running_mean, bn.running_mean)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_no_nan_after_200_autocast_steps(dtype):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), BatchRenorm2d(8, warmup_steps=20, ramp_steps=50),
                          nn.ReLU(), nn.Conv2d(8, 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(200):
        x = torch.randn(2, 1, 16, 16) * 50 + 200  # large activations: bf16 variance would lose precision
        with torch.autocast("cpu", dtype=dtype):
            loss = model(x).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layer = model[1]
    assert torch.isfinite(layer.running_mean).all()
    assert torch.isfinite(layer.running_var).all()
    assert torch.isfinite(loss)
    assert layer.running_mean.dtype == torch.float32


def test_batch_size_one_and_channels_last():
    layer = BatchRenorm2d(3, warmup_steps=0, ramp_steps=0)
    x = torch.randn(1, 3, 8, 8)
    reference = layer(x)
    layer_cl = BatchRenorm2d(3, warmup_steps=0, ramp_steps=0)
    out = layer_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(layer_cl.running_var, layer.running_var)


def test_set_renorm_schedule_changes_every_layer():
    model = nn.Sequential(BatchRenorm2d(2), nn.Sequential(BatchRenorm2d(2)))
    assert set_renorm_schedule(model, warmup_steps=5, ramp_steps=7) == 2
    assert all(m.schedule.ramp_steps == 7 for m in model.modules() if isinstance(m, BatchRenorm2d))


def test_bad_arguments_are_reported():
    with pytest.raises(ConfigError, match="r_max >= 1"):
        BatchRenorm2d(2, r_max=0.5)
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        BatchRenorm2d(2, warmup_steps=-1)
    with pytest.raises(ShapeError, match=r"expects a 4-D input .* got shape \(2, 3\)"):
        BatchRenorm2d(3)(torch.randn(2, 3))
