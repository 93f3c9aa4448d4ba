"""Batch Renormalization (Ioffe 2017) with a warm-up/ramp schedule.

At inference BatchRenorm is exactly BatchNorm in eval mode: a fixed affine map built from running
statistics, so tiled prediction can equal whole-image prediction. In training it normalizes with batch
statistics corrected towards the running ones, which removes the train/eval disparity of BatchNorm with
small batches::

    r = clip(sigma_B / sigma_run, 1/r_max, r_max)          (no gradient)
    d = clip((mu_B - mu_run) / sigma_run, -d_max, d_max)   (no gradient)
    y = weight * ((x - mu_B) / sigma_B * r + d) + bias

Because r and d carry no gradient, ``y`` equals ``F.batch_norm`` in training mode with weight ``weight * r``
and bias ``bias + weight * d``. We use exactly that: torch's fused kernel does the normalization, its
backward and the running-statistics update, and the only extra work is one no-grad pass for the batch
statistics. That keeps the cost within a few percent of BatchNorm instead of the ~35 % of an elementwise
implementation (see benchmarks/layers.py).

The schedule (plain BatchNorm during ``warmup_steps``, then r_max and d_max ramped linearly to their targets
over ``ramp_steps``) is driven by the ``num_batches_tracked`` buffer that every torch BatchNorm already has.
The state dict therefore has exactly BatchNorm's keys: BatchNorm checkpoints load into BatchRenorm and the
schedule position survives save/load and resumed training. The schedule's hyper-parameters are constructor
arguments, recorded by :func:`seamfree.models.save_model` in the checkpoint configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from seamfree.errors import ConfigError, ShapeError

__all__ = [
    "DEFAULT_MOMENTUM",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "BatchRenormNd",
    "ClipCount",
    "RenormSchedule",
    "batch_statistics_only",
    "counting_clips",
    "set_renorm_schedule",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class ClipCount:
    """How often BatchRenorm's corrections hit their bounds in training-mode forwards: ``statistics`` is the number
    of (layer, channel, forward) corrections made with r_max > 1 or d_max > 0, ``r_clipped`` / ``d_clipped`` how
    many of them had r outside [1/r_max, r_max] or |d| > d_max, ``clipped`` how many had either."""

    statistics: int = 0
    r_clipped: int = 0
    d_clipped: int = 0
    clipped: int = 0

    def rate(self, which: str = "any") -> float | None:
        """The clipped share ("any", "r" or "d"); None when no correction was made."""
        count = {"any": self.clipped, "r": self.r_clipped, "d": self.d_clipped}[which]
        return count / self.statistics if self.statistics else None


_CLIP_COUNT: ContextVar[ClipCount | None] = ContextVar("seamfree_renorm_clip_count", default=None)


@contextlib.contextmanager
def counting_clips() -> Iterator[ClipCount]:
    """Count, within the block, how often every BatchRenorm layer's r and d are clipped in training mode (any
    model, copies included): where they are not, a training-mode forward equals the eval-mode one, so BatchRenorm's
    train/eval disparity is 0 by construction and only the clip rate can make it otherwise.

    Examples
    --------
    >>> layer = BatchRenorm2d(2, warmup_steps=0, ramp_steps=0)  # running statistics 0 and 1: r, d off at once
    >>> with counting_clips() as count:
    ...     _ = layer(torch.randn(4, 2, 8, 8) * 10 + 20)
    >>> count.statistics, count.rate()
    (2, 1.0)
    """
    count = ClipCount()
    token = _CLIP_COUNT.set(count)
    try:
        yield count
    finally:
        _CLIP_COUNT.reset(token)


# The running statistics' default momentum (torch's BatchNorm has 0.1).
DEFAULT_MOMENTUM = 0.01


class RenormSchedule:
    """Piecewise-linear schedule of the clipping bounds r_max and d_max over training steps.

    Parameters
    ----------
    warmup_steps : int
        Steps of plain BatchNorm (r_max = 1, d_max = 0) while the running statistics settle.
    ramp_steps : int
        Steps over which r_max goes linearly from 1 to ``r_max`` and d_max from 0 to ``d_max``.
    r_max, d_max : float
        Final clipping bounds (Ioffe 2017 uses 3 and 5).

    Examples
    --------
    >>> s = RenormSchedule(warmup_steps=10, ramp_steps=10, r_max=3.0, d_max=5.0)
    >>> s.bounds(5), s.bounds(15), s.bounds(100)
    ((1.0, 0.0), (2.0, 2.5), (3.0, 5.0))
    """

    def __init__(self, warmup_steps: int, ramp_steps: int, r_max: float, d_max: float) -> None:
        if warmup_steps < 0 or ramp_steps < 0:
            raise ConfigError(
                f"BatchRenorm schedule steps must be >= 0, got warmup_steps={warmup_steps}, "
                f"ramp_steps={ramp_steps}"
            )
        if r_max < 1.0 or d_max < 0.0:
            raise ConfigError(
                f"BatchRenorm bounds need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}; "
                "r_max=1, d_max=0 is plain BatchNorm"
            )
        self.warmup_steps = int(warmup_steps)
        self.ramp_steps = int(ramp_steps)
        self.r_max = float(r_max)
        self.d_max = float(d_max)

    def progress(self, step: int) -> float:
        """Return the fraction of the ramp completed at ``step`` (0 during warm-up, 1 after the ramp)."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        return min(1.0, (step - self.warmup_steps) / self.ramp_steps)

    def bounds(self, step: int) -> tuple[float, float]:
        """Return ``(r_max, d_max)`` in force at training ``step``."""
        t = self.progress(step)
        return 1.0 + (self.r_max - 1.0) * t, self.d_max * t


class BatchRenormNd(_BatchNorm):
    """Shared implementation of BatchRenorm1d/2d/3d; see the module docstring."""

    _batch_statistics_only: bool = False  # see batch_statistics_only()

    _spatial_dims: int

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = DEFAULT_MOMENTUM,
        affine: bool = True,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 1000,
        ramp_steps: int = 4000,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats=True, device=device, dtype=dtype
        )
        self.schedule = RenormSchedule(warmup_steps, ramp_steps, r_max, d_max)

    @property
    def step(self) -> int:
        """Training steps taken so far (the ``num_batches_tracked`` buffer)."""
        assert self.num_batches_tracked is not None  # always tracked: constructor forces it
        return int(self.num_batches_tracked.item())

    def current_bounds(self) -> tuple[float, float]:
        """Return the ``(r_max, d_max)`` the next training step will use ((1, 0): plain batch statistics, as in
        the warm-up and while statistics are recalibrated, see :func:`batch_statistics_only`)."""
        if self._batch_statistics_only:
            return 1.0, 0.0
        return self.schedule.bounds(self.step)

    def _check_input_dim(self, input: Tensor) -> None:
        expected = self._spatial_dims + 2
        if input.dim() != expected and not (self._spatial_dims == 1 and input.dim() == 2):
            raise ShapeError(
                f"{type(self).__name__} expects a {expected}-D input (N, C, *spatial), "
                f"got shape {tuple(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        low_precision = input.dtype in _LOW_PRECISION
        # Statistics in float32 even under autocast: variances of bf16/fp16 activations overflow or
        # lose all precision, which is where NaNs come from.
        x = input.float() if low_precision else input
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.training:
                y = self._forward_train(x)
            else:
                y = F.batch_norm(
                    x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
                )
        return y.to(input.dtype) if low_precision else y

    def _forward_train(self, x: Tensor) -> Tensor:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        r_max, d_max = self.current_bounds()
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / self.step if self.momentum is None else self.momentum
        weight, bias = self._corrected_affine(x, r_max, d_max)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, True, momentum, self.eps)

    def _corrected_affine(self, x: Tensor, r_max: float, d_max: float) -> tuple[Tensor | None, Tensor | None]:
        """Return weight * r and bias + weight * d, or the plain affine parameters while r=1, d=0."""
        if r_max == 1.0 and d_max == 0.0:
            return self.weight, self.bias
        assert self.running_mean is not None and self.running_var is not None
        with torch.no_grad():
            reduce_dims = [0, *range(2, x.dim())]
            batch_var, batch_mean = torch.var_mean(x, dim=reduce_dims, correction=0)
            running_std = torch.sqrt(self.running_var + self.eps)
            r = torch.sqrt(batch_var + self.eps) / running_std
            d = (batch_mean - self.running_mean) / running_std
            count = _CLIP_COUNT.get()
            if count is not None:
                _count_clips(count, r, d, r_max, d_max)
            r.clamp_(1.0 / r_max, r_max)
            d.clamp_(-d_max, d_max)
        if self.weight is None or self.bias is None:
            return r, d
        return self.weight * r, torch.addcmul(self.bias, self.weight, d)

    def extra_repr(self) -> str:
        s = self.schedule
        return (
            f"{super().extra_repr()}, r_max={s.r_max}, d_max={s.d_max}, "
            f"warmup_steps={s.warmup_steps}, ramp_steps={s.ramp_steps}"
        )


def _count_clips(count: ClipCount, r: Tensor, d: Tensor, r_max: float, d_max: float) -> None:
    r_out = (r < 1.0 / r_max) | (r > r_max)
    d_out = d.abs() > d_max
    count.statistics += r.numel()
    count.r_clipped += int(r_out.sum())
    count.d_clipped += int(d_out.sum())
    count.clipped += int((r_out | d_out).sum())


class BatchRenorm1d(BatchRenormNd):
    """Batch Renormalization over (N, C) or (N, C, L) inputs; see :mod:`seamfree.layers.batchrenorm`."""

    _spatial_dims = 1


class BatchRenorm2d(BatchRenormNd):
    """Batch Renormalization over (N, C, H, W) inputs; see :mod:`seamfree.layers.batchrenorm`.

    Examples
    --------
    >>> import torch
    >>> layer = BatchRenorm2d(4, warmup_steps=0, ramp_steps=0)
    >>> layer(torch.randn(1, 4, 8, 8)).shape   # batch size 1 works: statistics over space
    torch.Size([1, 4, 8, 8])
    """

    _spatial_dims = 2


class BatchRenorm3d(BatchRenormNd):
    """Batch Renormalization over (N, C, D, H, W) inputs; see :mod:`seamfree.layers.batchrenorm`."""

    _spatial_dims = 3


@contextlib.contextmanager
def batch_statistics_only(model: nn.Module) -> Iterator[None]:
    """Within the block, every BatchRenorm layer of ``model`` in training mode normalizes with its batch's
    statistics alone (no r/d correction towards running statistics that are being re-estimated)."""
    layers = [m for m in model.modules() if isinstance(m, BatchRenormNd)]
    for layer in layers:
        layer._batch_statistics_only = True
    try:
        yield
    finally:
        for layer in layers:
            layer._batch_statistics_only = False


def set_renorm_schedule(
    model: torch.nn.Module,
    *,
    warmup_steps: int,
    ramp_steps: int,
    r_max: float | None = None,
    d_max: float | None = None,
) -> int:
    """Set the schedule of every BatchRenorm layer in ``model``; return how many layers were changed."""
    count = 0
    for module in model.modules():
        if isinstance(module, BatchRenormNd):
            old = module.schedule
            module.schedule = RenormSchedule(
                warmup_steps,
                ramp_steps,
                old.r_max if r_max is None else r_max,
                old.d_max if d_max is None else d_max,
            )
            count += 1
    return count


# Deprecated private name of BatchRenormNd (deleted in seamfree 0.2.0, _version.REMOVED_IN).
_BatchRenorm = BatchRenormNd
