"""The receptive field of a model, measured rather than assumed: its theoretical support and its effective extent.

*Theoretical* receptive field: the support of the input gradient of one output voxel, with the model in eval
mode, made piecewise-linear-free (activations → identity, max-pooling → average pooling) so that no
inactive ReLU or max-pool routing hides part of the support. A pooling network's support depends on the output
position modulo the network stride, so it is measured at every stride phase and the maximum is kept.
*Effective* receptive field: where the gradient of the real model exceeds ``tolerance`` × its maximum.

A model whose layers use statistics of the whole tile (InstanceNorm, GroupNorm, attention, ...) has a
receptive field as large as any tile; it is reported as tile-dependent, and its radius is then the one of the
same network with those layers removed (what still matters for zero-padding edge effects).

Compiled models (TorchScript, ``torch.export``) cannot be linearized: their support is the union of the
gradient supports of several random inputs (``linearized=False`` says so), and for a tile-dependent one the
support of the gradients above a small fraction of their maximum (the statistics of the tile spread a faint
gradient everywhere). The exactness check of ``diagnose`` confirms such a halo empirically.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from seamfree.errors import ShapeError
from seamfree.layers.audit import NormAudit, audit_norms, classify_layer
from seamfree.layers.modes import eval_mode
from seamfree.models.geometry import infer_geometry, round_up

__all__ = ["ReceptiveField", "measure_receptive_field"]

logger = logging.getLogger(__name__)

Select = Callable[[Any], torch.Tensor]

# A compiled tile-dependent model's statistics spread a faint gradient over the whole probe: its support is
# where the gradient exceeds this fraction of the maximum, on one square probe of this side (2D, 3D). On a MONAI
# BasicUNet this finds a radius of ~70 where its linearized eager copy has 96: an estimate of the edge effects
# of a model that tiles inexactly anyway.
_COMPILED_THRESHOLD = 3e-3
_COMPILED_PROBE = {1: 1024, 2: 512, 3: 96}
_COMPILED_SAMPLES = 4


def _tensor(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"the model returns a {type(out).__name__}, not a tensor; choose one output "
                         "(output=INDEX or KEY, CLI --output)")
    return out


_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.PReLU, nn.Tanh, nn.Sigmoid,
                nn.Softplus, nn.ReLU6, nn.Hardswish, nn.Softmax, nn.SELU, nn.CELU)
_MAX_POOL: dict[type[nn.Module], type[nn.Module]] = {
    nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d,
}


@dataclass(frozen=True)
class ReceptiveField:
    """A measured receptive field.

    Attributes
    ----------
    radius : tuple of int
        Theoretical radius per axis (max over stride phases): output voxel at c depends on [c - r, c + r].
    effective_radius : tuple of int
        Radius where the gradient exceeds ``tolerance`` × max.
    network_stride : tuple of int
    tile_dependent : bool
        True if some layer uses statistics of the whole tile: then no halo makes tiling exact.
    tolerance : float
    context : tuple of int, optional
        Voxels a core needs on each side for exact crop stitching (theoretical support, all stride phases, cores
        starting on multiples of the stride); at most the radius. None: use the radius.
    linearized : bool
        Measured on a linearized copy (the exact support); False where it is estimated on the real model with
        several random inputs: compiled models, and models with global context (unbounded support).
    """

    radius: tuple[int, ...]
    effective_radius: tuple[int, ...]
    network_stride: tuple[int, ...]
    tile_dependent: bool
    tolerance: float
    context: tuple[int, ...] | None = None
    linearized: bool = True

    @property
    def halo(self) -> tuple[int, ...]:
        """Smallest halo that makes crop stitching exact: the core context rounded up to the network stride."""
        needed = self.context if self.context is not None else self.radius
        return tuple(round_up(r, s) for r, s in zip(needed, self.network_stride))

    def to_dict(self) -> dict[str, object]:
        return {"radius": list(self.radius), "effective_radius": list(self.effective_radius),
                "network_stride": list(self.network_stride), "tile_dependent": self.tile_dependent,
                "context": list(self.context) if self.context is not None else None,
                "halo": list(self.halo), "tolerance": self.tolerance,
                "linearized": self.linearized}


def _batched(network: nn.Module, select: Select, x: torch.Tensor) -> torch.Tensor:
    """The selected output of a batch; item by item for models whose batch size is fixed (``torch.export``)."""
    try:
        return _tensor(select(network(x)))
    except Exception:
        if x.shape[0] == 1:
            raise
        return torch.cat([_tensor(select(network(x[i:i + 1]))) for i in range(x.shape[0])])


def _thin(stride: int, strides: int) -> int:
    """Width of a probe across the measured axis: ``strides`` network strides, at least 16 voxels (exported
    programs often guard their input sizes from below)."""
    return max(strides * stride, round_up(16, stride))


def _compiled(model: nn.Module) -> bool:
    """Whether some part of the model is compiled (TorchScript, ``torch.export``): its layers cannot be swapped."""
    return any(isinstance(m, torch.jit.ScriptModule | torch.fx.GraphModule) for m in model.modules())


def _linearized(model: nn.Module) -> nn.Module | None:
    """Return a float32 eval copy with activations → identity, max → average pooling and per-tile statistics
    layers removed; None for compiled models, which cannot be rewritten."""
    if _compiled(model):
        return None
    probe = copy.deepcopy(model).float().eval()
    for parent in probe.modules():
        for name, child in parent.named_children():
            replacement: nn.Module | None = None
            if isinstance(child, _ACTIVATIONS):
                replacement = nn.Identity()
            elif isinstance(child, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
                average = _MAX_POOL[type(child)]
                replacement = average(child.kernel_size, child.stride, child.padding)
            else:
                known = classify_layer(child)
                if known is not None and known[1] and known[0] == "per-tile":
                    replacement = nn.Identity()
            if replacement is not None:
                setattr(parent, name, replacement)
    return probe


@dataclass(frozen=True)
class _Gradients:
    """How input gradients are taken: which network, how many random inputs per phase, which support."""

    network: nn.Module
    in_channels: int
    stride: tuple[int, ...]
    select: Select
    samples: int = 1
    threshold: float = 0.0

    def maps(self, probe: tuple[int, ...], phases: int, seed: int = 0) -> tuple[list[np.ndarray], tuple[int, ...]]:
        """Return |input gradient| maps, one per stride phase (max over the samples), and the output position of
        phase 0. Phases and samples run as independent items of one batch (eval mode: items do not interact)."""
        with torch.inference_mode(False), torch.enable_grad():  # callers may be in inference or no-grad mode
            return self._maps(probe, phases, seed)

    def _maps(self, probe: tuple[int, ...], phases: int, seed: int) -> tuple[list[np.ndarray], tuple[int, ...]]:
        parameter = next(self.network.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        generator = torch.Generator().manual_seed(seed)
        items = phases * self.samples
        x = torch.randn((items, self.in_channels, *probe), generator=generator).to(device, dtype).requires_grad_()
        centre = tuple(p // 2 // s * s for p, s in zip(probe, self.stride))
        with eval_mode(self.network):
            out = _batched(self.network, self.select, x)
        if tuple(out.shape[2:]) != probe:
            raise ShapeError(
                f"the model's output spatial shape {tuple(out.shape[2:])} differs from its input {probe}; "
                "seamfree needs models that predict every input voxel (same-size output)"
            )
        selected = torch.stack([
            out[(i, slice(None), *(c + (i % phases) % s for c, s in zip(centre, self.stride)))].sum()  # type: ignore[index]
            for i in range(items)
        ])
        (grad,) = torch.autograd.grad(selected.float().sum(), x)
        magnitude = grad.detach().float().abs().sum(dim=1).cpu().numpy()
        return [magnitude[k::phases].max(axis=0) for k in range(phases)], centre

    def axis_radius(self, axis: int, start: int, limit: int) -> tuple[int, int, bool]:
        """Return the theoretical radius and core context along ``axis``, and whether it exceeded ``limit``.

        The support of a linearized network is a box, so each axis is measured with a probe that is long on
        that axis and only two strides wide on the others.
        """
        length = start
        while True:
            probe = tuple(length if a == axis else _thin(s, 2) for a, s in enumerate(self.stride))
            maps, centre = self.maps(probe, self.stride[axis])
            radius, context, touches = _radius(maps, centre, self.stride, self.threshold, [axis])
            if not touches:
                return radius[axis], context[axis], False
            if 2 * length > limit:
                return radius[axis], context[axis], True
            length = round_up(2 * length, self.stride[axis])


def _radius(maps: list[np.ndarray], centre: tuple[int, ...], stride: tuple[int, ...], threshold: float,
            axes: range | list[int]) -> tuple[list[int], list[int], bool]:
    """Return the radius and the core context of {|g| > threshold·max} along ``axes`` over all phases, and
    whether the support touches the probe border along one of them.

    The *context* is what a core needs on each side for crop stitching to be exact. Cores start on multiples of
    the stride, so an output voxel of phase k (position ≡ k mod s) is at least k voxels inside its core from the
    core's start and s − 1 − k from its end: it needs ``left(k) − k`` and ``right(k) − (s − 1 − k)`` voxels
    beyond the core, which can be less than the radius.
    """
    radius = [0] * len(centre)
    context = [0] * len(centre)
    touches = False
    for k, grad in enumerate(maps):
        if grad.max() <= 0:
            continue
        support = np.argwhere(grad > threshold * grad.max())
        lo, hi = support.min(axis=0), support.max(axis=0)
        for axis in axes:
            phase = k % stride[axis]
            position = centre[axis] + phase
            left, right = position - int(lo[axis]), int(hi[axis]) - position
            radius[axis] = max(radius[axis], left, right)
            context[axis] = max(context[axis], left - phase, right - (stride[axis] - 1 - phase))
            touches |= bool(lo[axis] == 0 or hi[axis] == grad.shape[axis] - 1)
    return radius, context, touches


def _support(model: nn.Module, in_channels: int, stride: tuple[int, ...],
             select: Select) -> tuple[_Gradients, bool]:
    """Return how the theoretical support is measured, and whether on a linearized copy (exact support)."""
    linear = _linearized(model)
    if linear is not None:
        gradients = _Gradients(linear, in_channels, stride, select)
        try:
            gradients.maps(tuple(_thin(s, 4) for s in stride), 1)
            return gradients, True
        except (RuntimeError, ShapeError) as exc:  # e.g. a style branch whose pooling was removed
            logger.info("the linearized copy does not run (%s); measuring the real model", exc)
    return _Gradients(model, in_channels, stride, select, _COMPILED_SAMPLES), False


def _compiled_tile_dependent_radius(gradients: _Gradients) -> tuple[list[int], list[int]]:
    """Radius and context of a compiled tile-dependent model: the support above a fraction of the gradient
    maximum on one square probe (see ``_COMPILED_THRESHOLD``)."""
    stride = gradients.stride
    side = _COMPILED_PROBE[len(stride)]
    maps, centre = gradients.maps(tuple(round_up(side, s) for s in stride), 1)
    radius, _, _ = _radius(maps, centre, stride, _COMPILED_THRESHOLD, range(len(stride)))
    return radius, radius  # one stride phase: the context of the others is bounded by the radius


def measure_receptive_field(
    model: nn.Module,
    *,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    network_stride: tuple[int, ...] | None = None,
    select: Select | None = None,
    tolerance: float = 1e-3,
    max_extent: int = 4096,
    audit: NormAudit | None = None,
) -> ReceptiveField:
    """Return the measured receptive field of ``model`` (theoretical and effective, all stride phases).

    Parameters
    ----------
    model : nn.Module
        A segmentation model with same-size output. Not modified.
    spatial_dims, in_channels, network_stride : optional
        The model's geometry; what is not given is inferred from the model (:mod:`seamfree.models.geometry`).
    select : callable, optional
        Picks the segmentation tensor from the model's output (models returning tuples or dicts).
    tolerance : float
        Relative gradient threshold of the effective receptive field.
    max_extent : int
        Largest probe length per axis; a support reaching it means global context (tile-dependent).
    audit : NormAudit, optional
        The model's norm audit when the caller has it (it is made otherwise).

    Examples
    --------
    >>> from seamfree.models import UNet
    >>> measure_receptive_field(UNet(2, 1, 1, depth=1, features=2, norm="batch")).radius
    (9, 9)
    """
    if spatial_dims is None or in_channels is None or network_stride is None:
        # the missing geometry from the model itself (never through describe_model: its cached measurement would
        # answer with its own tolerance)
        dims, channels, stride_found, _, _ = infer_geometry(model, spatial_dims, in_channels)
        spatial_dims, in_channels = dims, channels
        network_stride = network_stride or stride_found
    select = select or _tensor
    tile_dependent = (audit or audit_norms(model)).verdict == "tile-dependent"
    stride = tuple(network_stride)
    gradients, linearized = _support(model, in_channels, stride, select)
    radius: list[int] = []
    context: list[int] = []
    if not linearized and tile_dependent:
        radius, context = _compiled_tile_dependent_radius(gradients)
    for axis in range(spatial_dims if not radius else 0):
        value, needed, unbounded = gradients.axis_radius(axis, round_up(64, stride[axis]), max_extent)
        if unbounded:
            logger.warning("receptive field along axis %d exceeds %d voxels: treating the model as "
                           "tile-dependent (global context)", axis, max_extent)
            tile_dependent = True
            break
        radius.append(value)
        context.append(needed)
    if len(radius) < spatial_dims:  # global context: the halo for edge effects is estimated as for compiled models
        radius, context = _compiled_tile_dependent_radius(
            _Gradients(model, in_channels, stride, select, _COMPILED_SAMPLES))
        linearized = False
    probe = tuple(round_up(2 * r + 2 * s, s) for r, s in zip(radius, stride))
    real = _Gradients(model, in_channels, stride, select)
    effective = []
    for axis in range(spatial_dims):  # a probe long on this axis, four strides wide on the others
        thin = tuple(p if a == axis else min(p, _thin(s, 4)) for a, (p, s) in enumerate(zip(probe, stride)))
        effective.append(_radius(*real.maps(thin, 1, seed=1), stride, tolerance, [axis])[0][axis])
    return ReceptiveField(tuple(radius), tuple(effective), stride, tile_dependent, tolerance, tuple(context),
                          linearized)
