"""Receptive field, halo and tiling suggestions, measured on the model rather than assumed.

*Theoretical* receptive field: the support of the input gradient of one output voxel, with the model in eval
mode, made piecewise-linear-free (activations → identity, max-pooling → average pooling) so that no
inactive ReLU or max-pool routing hides part of the support. A pooling network's support depends on the output
position modulo the network stride, so it is measured at every stride phase and the maximum is kept.
*Effective* receptive field: where the gradient of the real model exceeds ``tolerance`` × its maximum.

A model whose layers use statistics of the whole tile (InstanceNorm, GroupNorm, attention, ...) has a
receptive field as large as any tile; it is reported as tile-dependent, and its radius is then the one of the
same network with those layers removed (what still matters for zero-padding edge effects).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seamfree.errors import ConfigError, ShapeError
from seamfree.layers.audit import NormAudit, audit_norms, classify_layer
from seamfree.tiling.engine import eval_mode
from seamfree.tiling.grid import round_up

__all__ = ["ReceptiveField", "TilingSuggestion", "default_memory_budget", "measure_receptive_field", "model_geometry",
           "suggest_tiling"]

logger = logging.getLogger(__name__)

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
    """

    radius: tuple[int, ...]
    effective_radius: tuple[int, ...]
    network_stride: tuple[int, ...]
    tile_dependent: bool
    tolerance: float
    context: tuple[int, ...] | None = None

    @property
    def halo(self) -> tuple[int, ...]:
        """Smallest halo that makes crop stitching exact: the core context rounded up to the network stride."""
        needed = self.context if self.context is not None else self.radius
        return tuple(round_up(r, s) for r, s in zip(needed, self.network_stride))

    def to_dict(self) -> dict[str, object]:
        return {"radius": list(self.radius), "effective_radius": list(self.effective_radius),
                "network_stride": list(self.network_stride), "tile_dependent": self.tile_dependent,
                "context": list(self.context) if self.context is not None else None,
                "halo": list(self.halo), "tolerance": self.tolerance}


def model_geometry(model: nn.Module, spatial_dims: int | None = None) -> tuple[int, int, tuple[int, ...]]:
    """Return ``(spatial_dims, in_channels, network_stride)`` of a model (from its attributes or first conv)."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)), None)
    dims = spatial_dims or getattr(model, "spatial_dims", None)
    if dims is None and first_conv is not None:
        dims = len(first_conv.kernel_size)
    if dims is None:
        raise ConfigError(f"cannot tell the spatial dimensions of {type(model).__name__}; pass spatial_dims")
    in_channels = first_conv.in_channels if first_conv is not None else 1
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "in_channels" in config:
        in_channels = int(config["in_channels"])
    stride = getattr(model, "network_stride", None)
    if stride is None:
        stride = _pooling_stride(model, dims)
    return int(dims), int(in_channels), tuple(int(s) for s in stride)


def _pooling_stride(model: nn.Module, dims: int) -> tuple[int, ...]:
    """Estimate the network stride of a foreign model: product of pooling/strided-conv strides."""
    total = [1] * dims
    for module in model.modules():
        stride = getattr(module, "stride", None)
        if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) or stride is None:
            continue
        per_axis = (stride,) * dims if isinstance(stride, int) else tuple(stride)
        if len(per_axis) == dims:
            total = [t * s for t, s in zip(total, per_axis)]
    return tuple(total)


def _structural_copy(model: nn.Module, remove_tile_dependent: bool) -> nn.Module:
    probe = copy.deepcopy(model).float().eval()
    for parent in probe.modules():
        for name, child in parent.named_children():
            replacement: nn.Module | None = None
            if isinstance(child, _ACTIVATIONS):
                replacement = nn.Identity()
            elif isinstance(child, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
                average = _MAX_POOL[type(child)]
                replacement = average(child.kernel_size, child.stride, child.padding)
            elif remove_tile_dependent:
                known = classify_layer(child)
                if known is not None and known[1] and known[0] == "per-tile":
                    replacement = nn.Identity()
            if replacement is not None:
                setattr(parent, name, replacement)
    return probe


def _gradient_maps(
    model: nn.Module, in_channels: int, probe: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype,
    phases: int, seed: int = 0,
) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Return |input gradient| maps, one per stride phase, and the output position of phase 0.

    Phases run as independent samples of one batch (eval mode: samples do not interact).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((phases, in_channels, *probe), generator=generator, dtype=dtype).requires_grad_()
    centre = tuple(p // 2 // s * s for p, s in zip(probe, stride))
    out = model(x)
    if tuple(out.shape[2:]) != probe:
        raise ShapeError(
            f"the model's output spatial shape {tuple(out.shape[2:])} differs from its input {probe}; "
            "seamfree needs models that predict every input voxel (same-size output)"
        )
    selected = torch.stack([
        out[(k, slice(None), *(c + k % s for c, s in zip(centre, stride)))].sum() for k in range(phases)
    ])
    (grad,) = torch.autograd.grad(selected.sum(), x)
    return [grad[k].abs().sum(dim=0).numpy() for k in range(phases)], centre


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


def _axis_radius(structural: nn.Module, in_channels: int, stride: tuple[int, ...], axis: int,
                 start: int, limit: int) -> tuple[int, int, bool]:
    """Return the theoretical radius and core context along ``axis``, and whether it exceeded ``limit``.

    The support of the linearized network is a box, so each axis is measured with a probe that is long on that
    axis and only two strides wide on the others.
    """
    length = start
    while True:
        probe = tuple(length if a == axis else 2 * s for a, s in enumerate(stride))
        maps, centre = _gradient_maps(structural, in_channels, probe, stride, torch.float32, stride[axis])
        radius, context, touches = _radius(maps, centre, stride, 0.0, [axis])
        if not touches:
            return radius[axis], context[axis], False
        if 2 * length > limit:
            return radius[axis], context[axis], True
        length = round_up(2 * length, stride[axis])


def measure_receptive_field(
    model: nn.Module,
    *,
    spatial_dims: int | None = None,
    tolerance: float = 1e-3,
    max_extent: int = 4096,
    audit: NormAudit | None = None,
) -> ReceptiveField:
    """Return the measured receptive field of ``model`` (theoretical and effective, all stride phases).

    Parameters
    ----------
    model : nn.Module
        A segmentation model with same-size output. Not modified.
    spatial_dims : int, optional
        Needed only for foreign models that do not say it.
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
    dims, in_channels, stride = model_geometry(model, spatial_dims)
    tile_dependent = (audit or audit_norms(model)).verdict == "tile-dependent"
    structural = _structural_copy(model, remove_tile_dependent=True)
    radius, context = [], []
    for axis in range(dims):
        value, needed, unbounded = _axis_radius(structural, in_channels, stride, axis, round_up(64, stride[axis]),
                                                max_extent)
        if unbounded:
            logger.warning("receptive field along axis %d exceeds %d voxels: treating the model as "
                           "tile-dependent (global context)", axis, max_extent)
            tile_dependent = True
        radius.append(value)
        context.append(needed)
    probe = tuple(round_up(2 * r + 2 * s, s) for r, s in zip(radius, stride))
    effective = _effective_radius(model, in_channels, probe, stride, tolerance)
    return ReceptiveField(tuple(radius), effective, stride, tile_dependent, tolerance, tuple(context))


def _effective_radius(model: nn.Module, in_channels: int, probe: tuple[int, ...], stride: tuple[int, ...],
                      tolerance: float) -> tuple[int, ...]:
    """Effective radius per axis, each from a probe long on that axis and four strides wide on the others."""
    real = copy.deepcopy(model).float().eval()
    radius = []
    for axis in range(len(stride)):
        thin = tuple(p if a == axis else min(p, 4 * s) for a, (p, s) in enumerate(zip(probe, stride)))
        maps, centre = _gradient_maps(real, in_channels, thin, stride, torch.float32, phases=1, seed=1)
        radius.append(_radius(maps, centre, stride, tolerance, [axis])[0][axis])
    return tuple(radius)


@dataclass(frozen=True)
class TilingSuggestion:
    """Core, halo and tiles per batch for a model, an image and a memory budget."""

    core: tuple[int, ...]
    halo: tuple[int, ...]
    tiles_per_batch: int
    tile_shape: tuple[int, ...]
    estimated_bytes: int
    compute_ratio: float

    def to_dict(self) -> dict[str, object]:
        return {"core": list(self.core), "halo": list(self.halo), "tiles_per_batch": self.tiles_per_batch,
                "tile_shape": list(self.tile_shape), "estimated_bytes": self.estimated_bytes,
                "compute_ratio": self.compute_ratio}


@torch.inference_mode()
def activation_bytes_per_voxel(model: nn.Module, in_channels: int, stride: tuple[int, ...]) -> float:
    """Return the bytes of all intermediate outputs per input voxel (an upper bound of inference memory)."""
    probe = tuple(max(2 * s, 16) for s in stride)
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with eval_mode(model):
            model(torch.zeros((1, in_channels, *probe), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total / math.prod(probe)


def suggest_tiling(
    model: nn.Module,
    image_shape: tuple[int, ...],
    *,
    memory_budget: int | None = None,
    device: str = "cpu",
    receptive_field: ReceptiveField | None = None,
) -> TilingSuggestion:
    """Return the core, halo and tiles per batch that use ``memory_budget`` bytes with the least overhead.

    The halo is the measured receptive-field radius (rounded to the network stride). The number of cores per
    axis is the smallest for which a tile fits the budget, so cores are as large as memory allows and the
    recomputed halo, ``(core + 2·halo)^d / core^d``, as small as it can be. Default budget: a quarter of the
    available RAM, at most 4 GiB, on CPU (batch 1: large tiles are not slower per voxel there); half of the
    free GPU memory on CUDA (batch up to 4).
    """
    rf = receptive_field or measure_receptive_field(model)
    dims, in_channels, stride = model_geometry(model)
    if len(image_shape) != dims:
        raise ShapeError(f"image_shape {image_shape} has {len(image_shape)} axes, the model is {dims}D")
    budget = memory_budget or default_memory_budget(device)
    bytes_per_voxel = activation_bytes_per_voxel(model, in_channels, stride)
    padded = [round_up(n, s) for n, s in zip(image_shape, stride)]
    counts = [1] * dims

    def tile_of(counts: list[int]) -> tuple[list[int], list[int]]:
        core = [round_up(-(-p // k), s) for p, k, s in zip(padded, counts, stride)]
        tile = [min(c + 2 * h, p) for c, h, p in zip(core, rf.halo, padded)]
        return core, tile

    core, tile = tile_of(counts)
    while math.prod(tile) * bytes_per_voxel > budget:
        axis = int(np.argmax([c if c > s else 0 for c, s in zip(core, stride)]))
        if core[axis] <= stride[axis]:
            break
        counts[axis] += 1
        core, tile = tile_of(counts)
    tile_bytes = math.prod(tile) * bytes_per_voxel
    batch = 1 if device == "cpu" else int(max(1, min(4, budget // max(tile_bytes, 1))))
    ratio = math.prod(k * t for k, t in zip(counts, tile)) / math.prod(image_shape)
    return TilingSuggestion(tuple(core), rf.halo, batch, tuple(tile), int(tile_bytes * batch), ratio)


def default_memory_budget(device: str) -> int:
    """Return the default bytes for activations: half the free GPU memory, or min(RAM/4, 4 GiB) on CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.5)
    try:
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 << 30
    return int(min(4 << 30, available // 4))
