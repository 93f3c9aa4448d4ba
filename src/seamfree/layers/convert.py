"""Fix a trained model's normalization: convert its layers, or recalibrate their running statistics."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from seamfree.errors import ConfigError
from seamfree.layers.batchrenorm import BatchRenormNd, batch_statistics_only
from seamfree.layers.factory import create_norm_layer

__all__ = ["convert_norm", "recalibrate_norm"]

logger = logging.getLogger(__name__)

_CONVERTIBLE_TARGETS = ("batchrenorm", "batch")


def _spatial_dims_of(layer: _BatchNorm) -> int:
    name = type(layer).__name__
    for dims in (1, 2, 3):
        if name.endswith(f"{dims}d"):
            return dims
    raise ConfigError(f"cannot tell the spatial dimensions of {name}; expected a *1d/*2d/*3d layer")


def _is_source(module: nn.Module, source: str) -> bool:
    if source == "batch":
        return isinstance(module, _BatchNorm) and not isinstance(module, BatchRenormNd)
    if source == "batchrenorm":
        return isinstance(module, BatchRenormNd)
    raise ConfigError(f"convert_norm can convert from 'batch' or 'batchrenorm', got from_={source!r}")


def convert_norm(
    model: nn.Module,
    to: str = "batchrenorm",
    *,
    from_: str = "batch",
    options: dict[str, object] | None = None,
    skip_warmup: bool = True,
) -> nn.Module:
    """Return a copy of ``model`` whose ``from_`` normalization layers are replaced by ``to`` layers.

    Affine parameters and running statistics are copied, so BatchNorm -> BatchRenorm gives identical
    eval-mode outputs. The input model is not modified.

    Parameters
    ----------
    model : nn.Module
        A trained model.
    to : {"batchrenorm", "batch"}
        Target normalization (both use running statistics at inference, so the conversion is exact).
    from_ : {"batch", "batchrenorm"}
        Which layers to replace. Subclasses of torch's BatchNorm (including SyncBatchNorm) count as "batch".
    options : dict, optional
        Options of the new layers (e.g. the BatchRenorm schedule: ``{"warmup_steps": 0, "ramp_steps": 500}``).
    skip_warmup : bool
        For BatchRenorm targets, start the schedule after its warm-up: the copied running statistics are
        already trained, and fine-tuning with plain BatchNorm at a small batch size is the failure mode the
        conversion is meant to avoid.

    Examples
    --------
    >>> from torch import nn
    >>> converted = convert_norm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    >>> type(converted[1]).__name__
    'BatchRenorm2d'
    """
    if to not in _CONVERTIBLE_TARGETS:
        known = ", ".join(_CONVERTIBLE_TARGETS)
        raise ConfigError(
            f"convert_norm converts to normalizations with running statistics ({known}), got to={to!r}; "
            "a tile-wise norm cannot be built from BatchNorm statistics, retrain with it instead"
        )
    if from_ == to:
        raise ConfigError(f"from_ and to are both {to!r}: nothing to convert")
    converted = copy.deepcopy(model)
    count = _replace_children(converted, from_, to, options or {}, skip_warmup)
    if count == 0:
        logger.warning("convert_norm found no %s layers to convert in %s", from_, type(model).__name__)
    config = getattr(converted, "config", None)
    if count and isinstance(config, dict) and config.get("norm") == from_:
        config["norm"] = to
        config["norm_options"] = dict(options or {})
    logger.info("converted %d %s layers to %s", count, from_, to)
    return converted


def _replace_children(
    module: nn.Module, from_: str, to: str, options: dict[str, object], skip_warmup: bool
) -> int:
    count = 0
    for name, child in module.named_children():
        if _is_source(child, from_):
            assert isinstance(child, _BatchNorm)
            setattr(module, name, _converted_layer(child, to, options, skip_warmup))
            count += 1
        else:
            count += _replace_children(child, from_, to, options, skip_warmup)
    return count


def _converted_layer(layer: _BatchNorm, to: str, options: dict[str, object], skip_warmup: bool) -> nn.Module:
    layer_options: dict[str, object] = {"eps": layer.eps, "affine": layer.affine, **options}
    if to == "batch":
        layer_options.setdefault("momentum", layer.momentum)
    new = create_norm_layer(to, layer.num_features, _spatial_dims_of(layer), layer_options)
    assert isinstance(new, _BatchNorm)
    new.to(device=layer.weight.device if layer.weight is not None else None)
    with torch.no_grad():
        if layer.affine and new.affine:
            new.weight.copy_(layer.weight)
            new.bias.copy_(layer.bias)
        if layer.running_mean is not None and new.running_mean is not None:
            new.running_mean.copy_(layer.running_mean)
            assert layer.running_var is not None and new.running_var is not None
            new.running_var.copy_(layer.running_var)
        if isinstance(new, BatchRenormNd) and new.num_batches_tracked is not None:
            new.num_batches_tracked.fill_(new.schedule.warmup_steps if skip_warmup else 0)
    new.train(layer.training)
    return new


def _finite_statistics(layer: _NormBase) -> bool:
    assert layer.running_mean is not None
    assert layer.running_var is not None
    return bool(torch.isfinite(layer.running_mean).all() and torch.isfinite(layer.running_var).all())


def _tracked_norm_layers(model: nn.Module) -> list[_NormBase]:
    """Return the BatchNorm-like layers (BatchNorm, BatchRenorm, tracked InstanceNorm) with running statistics."""
    return [
        m for m in model.modules()
        if isinstance(m, _BatchNorm | _InstanceNorm) and m.track_running_stats and m.running_mean is not None
    ]


@torch.no_grad()
def recalibrate_norm(model: nn.Module, batches: Iterable[torch.Tensor], *, device: str | None = None) -> nn.Module:
    """Return ``model`` with the running statistics of its norm layers re-estimated on ``batches``.

    Each layer's new running mean and variance are the plain average over all batches of the statistics of the
    features that reach it: per channel over the batch and the spatial axes (BatchNorm, BatchRenorm), or per
    instance over the spatial axes and then averaged over the batch's instances (tracked InstanceNorm); the
    variance unbiased, as torch tracks it. seamfree computes them itself, in float64, from the layer's input (a
    forward pre-hook), never through the layers' momentum updates: those differ by type (torch's InstanceNorm
    turns ``momentum=None`` into 0.0 and keeps its reset statistics). During the pass every norm layer normalizes
    with its batch's own statistics (BatchRenorm without r/d), everything else (dropout, ...) is in eval mode.
    Weights, the BatchRenorm schedule position, ``num_batches_tracked`` and the model's train/eval mode are
    unchanged. The model is modified in place; on failure it is left as it was.

    Parameters
    ----------
    model : nn.Module
        Model with BatchNorm-like layers (BatchNorm, BatchRenorm, InstanceNorm with tracked statistics).
    batches : iterable of Tensor, each shape (N, C, *spatial)
        Target-domain inputs, already intensity-normalized like the training data.
    device : str, optional
        Device to run on; by default the device of the model's parameters.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.BatchNorm2d(1)).eval()
    >>> _ = recalibrate_norm(net, [torch.full((2, 1, 4, 4), 5.0)])
    >>> float(net[0].running_mean)
    5.0
    """
    layers = _tracked_norm_layers(model)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no normalization layers with running statistics to recalibrate; "
            "recalibration applies to BatchNorm, BatchRenorm and InstanceNorm(track_running_stats=True)"
        )
    if device is None:
        parameter = next(model.parameters(), None)
        device = str(parameter.device) if parameter is not None else "cpu"
    modes = {m: m.training for m in model.modules()}
    saved = {m: {k: v.clone() for k, v in m.state_dict().items()} for m in layers}
    sums: dict[nn.Module, list[torch.Tensor]] = {}

    def accumulate(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        mean, var = feature_statistics(layer, inputs[0])
        if layer in sums:
            sums[layer][0] += mean
            sums[layer][1] += var
        else:
            sums[layer] = [mean, var]

    handles = [layer.register_forward_pre_hook(accumulate) for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
    seen = 0
    try:
        with batch_statistics_only(model):  # BatchRenorm: no r/d towards the statistics being re-estimated
            for batch in batches:
                model(batch.to(device=device, dtype=torch.float32))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for layer, state in saved.items():
            layer.load_state_dict(state)  # the layers' own updates during the pass are discarded
            if seen and layer in sums:
                assert layer.running_mean is not None and layer.running_var is not None
                layer.running_mean.copy_(sums[layer][0] / seen)
                layer.running_var.copy_(sums[layer][1] / seen)
                if not _finite_statistics(layer):
                    layer.load_state_dict(state)
        for module, training in modes.items():
            module.train(training)
    if seen == 0:
        raise ConfigError("recalibrate_norm received no batches; pass at least one (N, C, *spatial) tensor")
    missed = [layer for layer in layers if layer not in sums]
    if missed:
        logger.warning("%d of %d norm layers saw no input during recalibration and keep their statistics",
                       len(missed), len(layers))
    logger.info("recalibrated %d norm layers on %d batches", len(layers), seen)
    return model


def feature_statistics(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and unbiased variance of the features ``x`` (N, C, *spatial) that ``layer`` tracks,
    in float64: over the batch and the spatial axes, or per instance and then averaged over the instances for an
    InstanceNorm."""
    x = x.detach().to(torch.float64)
    spatial = tuple(range(2, x.dim()))
    if isinstance(layer, _InstanceNorm):
        return x.mean(dim=spatial).mean(dim=0), x.var(dim=spatial, unbiased=True).mean(dim=0)
    axes = (0, *spatial)
    return x.mean(dim=axes), x.var(dim=axes, unbiased=True)

