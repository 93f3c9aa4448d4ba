"""The model contract: everything seamfree needs to know about a model, found once and cached.

:func:`describe_model` works for seamfree checkpoints, any ``nn.Module``, TorchScript (scripted or traced) and
``torch.export`` programs. It reads what the model says (attributes, first convolution, strides), probes with
small inputs what it does not say (spatial dimensions, input channels, network stride, which output of a tuple
or dict is the segmentation), audits its normalization layers, measures its receptive field, and confirms the
audit with an empirical tile-dependence probe. The result is cached by a digest of the parameters and buffers,
so ``predict``, ``diagnose`` and the distributed runner describe a model once per process.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from seamfree.config import did_you_mean
from seamfree.errors import ConfigError, ShapeError
from seamfree.layers.audit import NormAudit, audit_norms
from seamfree.layers.modes import eval_mode
from seamfree.models.geometry import model_geometry, round_up
from seamfree.models.receptive import ReceptiveField, measure_receptive_field

__all__ = ["ACTIVATIONS", "ModelInfo", "TileProbe", "clear_model_cache", "describe_model", "model_digest",
           "resolve_activation", "select_output"]

logger = logging.getLogger(__name__)

ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
OutputKey = int | str | None

# a probe core differing by more than this fraction of the output's scale depends on the tile (float noise of
# convolutions on differently sized inputs is ~1e-7 relative)
PROBE_TOLERANCE = 1e-4
_CACHE_SIZE = 16


@dataclass(frozen=True)
class TileProbe:
    """The empirical tile-dependence probe: two windows overlapping by more than twice the halo, shifted by a
    multiple of the network stride, predicted separately; their shared core must agree if tiling is exact.

    The input is noise on an intensity ramp, so that the two windows have different statistics.
    """

    window: tuple[int, ...]
    shift: tuple[int, ...]
    halo: tuple[int, ...]
    max_abs: float
    scale: float
    tolerance: float = PROBE_TOLERANCE

    @property
    def tile_dependent(self) -> bool:
        """Whether the shared core differs beyond float noise."""
        return self.max_abs > self.tolerance * max(self.scale, 1e-6)

    def to_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "shift": list(self.shift), "halo": list(self.halo),
                "max_abs": self.max_abs, "scale": self.scale, "tolerance": self.tolerance,
                "tile_dependent": self.tile_dependent}


@dataclass(frozen=True)
class ModelInfo:
    """What seamfree knows about a model (see :func:`describe_model`).

    Attributes
    ----------
    kind : {"seamfree", "module", "torchscript", "export"}
    spatial_dims, in_channels, out_channels : int
    network_stride : tuple of int
        Input sizes must be multiples of it; cores start on its multiples.
    output : int, str or None
        Which element of a tuple/list (index) or dict (key) output is the segmentation; None for a tensor.
    outputs : tuple of str
        What the model returns, one line per output (for messages).
    activation : {"none", "sigmoid", "softmax"}
        Applied to the selected output (resolved: never "auto").
    audit : NormAudit
        The static audit of the layers.
    receptive_field : ReceptiveField
    probe : TileProbe or None
        The empirical probe (None when it was not asked for).
    digest : str
        sha256 of the parameters and buffers (the cache key, and the fingerprint's model entry).
    geometry_from : str
        Where the spatial dimensions and input channels came from ("attributes", "first convolution", "probing",
        "given").
    """

    kind: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    network_stride: tuple[int, ...]
    output: OutputKey
    outputs: tuple[str, ...]
    activation: str
    audit: NormAudit
    receptive_field: ReceptiveField
    probe: TileProbe | None
    digest: str
    geometry_from: str
    notes: tuple[str, ...] = field(default=())

    @property
    def tile_dependent(self) -> bool:
        """Whether tiled predictions depend on the tiling: by the audit, the receptive field or the probe."""
        return (self.audit.verdict == "tile-dependent" or self.receptive_field.tile_dependent
                or (self.probe is not None and self.probe.tile_dependent))

    @property
    def verdict(self) -> str:
        """"tile-dependent", "tile-independent", or "unknown" (nothing could confirm the static audit)."""
        if self.tile_dependent:
            return "tile-dependent"
        if self.audit.verdict in ("tile-independent", "no-normalization") or self.probe is not None:
            return "tile-independent"
        return "unknown"

    @property
    def evidence(self) -> str:
        """Which evidence decided the verdict, in one sentence."""
        static = self.audit.verdict
        probe = self.probe
        measured = "" if probe is None else (
            f"the tile probe's shared core differs by {probe.max_abs:.2g} (output scale {probe.scale:.2g})")
        if probe is not None and probe.tile_dependent and static != "tile-dependent":
            return f"the empirical probe, against the static audit ({static}): {measured}"
        if static == "tile-dependent":
            agreed = "" if probe is None else f"; confirmed by the probe: {measured}"
            return f"the static audit ({self.audit.summary}){agreed}"
        if self.receptive_field.tile_dependent:
            return "the receptive field: its support reaches any probe's border (global context)"
        if probe is not None:
            return (f"the empirical probe ({measured}, within float noise); static audit: {static}")
        return f"the static audit only ({static}); no probe was run"

    def select(self, out: Any) -> torch.Tensor:
        """Return the segmentation tensor of a forward pass's output."""
        return select_output(out, self.output)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "network_stride": list(self.network_stride),
                "output": self.output, "outputs": list(self.outputs), "activation": self.activation,
                "verdict": self.verdict, "evidence": self.evidence, "static_verdict": self.audit.verdict,
                "receptive_field": self.receptive_field.to_dict(),
                "probe": None if self.probe is None else self.probe.to_dict(), "digest": self.digest,
                "geometry_from": self.geometry_from, "notes": list(self.notes)}


def select_output(out: Any, output: OutputKey) -> torch.Tensor:
    """Return element ``output`` of a tuple/list/dict model output (the output itself for a tensor).

    Examples
    --------
    >>> select_output((torch.zeros(1), torch.ones(2)), 1).tolist()
    [1.0, 1.0]
    """
    if isinstance(out, torch.Tensor):
        if output not in (None, 0, "0"):
            raise ConfigError(f"the model returns a single tensor, so output={output!r} (CLI --output) selects "
                              "nothing; leave it out")
        return out
    listing = "; ".join(_describe_outputs(out))
    if isinstance(out, tuple | list):
        index = int(output) if isinstance(output, int) or (isinstance(output, str) and output.isdigit()) else None
        if output is None:
            raise ConfigError(f"the model returns a {type(out).__name__} of {len(out)} outputs ({listing}); choose "
                              "the segmentation with output=INDEX (CLI --output INDEX)")
        if index is None or not 0 <= index < len(out):
            raise ConfigError(f"output {output!r} does not exist: the model returns {len(out)} outputs ({listing}); "
                              f"pass an index from 0 to {len(out) - 1}")
        chosen = out[index]
    elif isinstance(out, dict):
        if output is None or str(output) not in {str(k) for k in out}:
            hint = "" if output is None else did_you_mean(str(output), [str(k) for k in out])
            what = "choose the segmentation with" if output is None else f"output {output!r} is not a key:{hint}"
            raise ConfigError(f"the model returns a dict of {len(out)} outputs ({listing}); {what} "
                              "output=KEY (CLI --output KEY)")
        chosen = next(v for k, v in out.items() if str(k) == str(output))
    else:
        raise ConfigError(f"the model returns a {type(out).__name__}; seamfree needs a tensor, or a tuple or dict "
                          "of them with output=INDEX or KEY (CLI --output)")
    if not isinstance(chosen, torch.Tensor):
        raise ConfigError(f"output {output!r} of the model is a {type(chosen).__name__}, not a tensor ({listing}); "
                          "choose another with --output")
    return chosen


def _describe_outputs(out: Any) -> list[str]:
    def one(value: Any) -> str:
        return f"tensor {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__

    if isinstance(out, dict):
        return [f"{k!r}: {one(v)}" for k, v in out.items()]
    if isinstance(out, tuple | list):
        return [f"[{i}] {one(v)}" for i, v in enumerate(out)]
    return [one(out)]


def resolve_activation(model: nn.Module, activation: str) -> str:
    """Return the activation applied to the model output.

    "auto": sigmoid (one channel) or softmax (several) for seamfree models, which output logits; the activation
    a bioimage.io package declares (``model.seamfree_activation``); none for other models.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if activation != "auto":
        return activation
    declared = getattr(model, "seamfree_activation", None)
    if isinstance(declared, str) and declared in ACTIVATIONS[1:]:
        return declared
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("final_activation", None) is None and "out_channels" in config:
        return "sigmoid" if int(config["out_channels"]) == 1 else "softmax"
    return "none"


def model_digest(model: nn.Module) -> str:
    """Return the sha256 of the model's parameters and buffers (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        digest.update(key.encode())
        tensor = value.detach().cpu().contiguous()
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _kind(model: nn.Module) -> str:
    if isinstance(model, torch.jit.ScriptModule):
        return "torchscript"
    if isinstance(model, torch.fx.GraphModule):
        return "export"
    if getattr(model, "architecture", None) is not None and isinstance(getattr(model, "config", None), dict):
        return "seamfree"
    return "module"


def _device(model: nn.Module) -> torch.device:
    parameter = next(itertools.chain(model.parameters(), model.buffers()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    parameter = next(model.parameters(), None)
    return parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32


def _forward(model: nn.Module, x: torch.Tensor) -> Any:
    with eval_mode(model), torch.inference_mode():
        return model(x.to(_device(model), _dtype(model)))


def _try_forward(model: nn.Module, shape: Sequence[int]) -> Any | None:
    """The model's output on a zero input of ``shape``, or None if it does not run on it."""
    try:
        return _forward(model, torch.zeros(tuple(shape)))
    except Exception:  # a foreign forward can fail in any way on a shape it does not accept
        return None


def _same_size(out: Any, shape: Sequence[int]) -> bool:
    tensors = [out] if isinstance(out, torch.Tensor) else list(out.values()) if isinstance(out, dict) else \
        list(out) if isinstance(out, tuple | list) else []
    return any(isinstance(t, torch.Tensor) and tuple(t.shape[2:]) == tuple(shape[2:]) for t in tensors)


def _probe_geometry(model: nn.Module, dims: int | None, channels: int | None) -> tuple[int, int]:
    """Find spatial dimensions and input channels by running small inputs (for models that have no convolution)."""
    for d, c in itertools.product([dims] if dims else [2, 3], [channels] if channels else [1, 2, 3, 4]):
        if _try_forward(model, (1, c, *(64 if d == 2 else 32,) * d)) is not None:
            return d, c  # whether its output has the input's size is checked next
    raise ConfigError(
        f"cannot tell the spatial dimensions and input channels of {type(model).__name__}: it has no convolution "
        "to read them from and no 2D or 3D input of 1 to 4 channels ran; pass spatial_dims= and in_channels= "
        "(CLI --spatial-dims, --in-channels)"
    )


def _measure_stride(model: nn.Module, dims: int, channels: int) -> tuple[int, ...]:
    """The smallest size step per axis the model accepts with a same-size output (its network stride)."""
    base = 64 if dims <= 2 else 32
    stride = []
    for axis in range(dims):
        found = base
        for step in (2 ** k for k in range(int(math.log2(base)))):
            shape = [1, channels, *(base + (step if a == axis else 0) for a in range(dims))]
            if (out := _try_forward(model, shape)) is not None and _same_size(out, shape):
                found = step
                break
        stride.append(found)
    return tuple(stride)


def _odd_multiple(stride: int, at_least: int = 16) -> int:
    """The smallest odd multiple ≥ 3 of ``stride`` that is ≥ ``at_least`` (a size a larger stride would refuse,
    with at least 3 voxels at the coarsest level, where InstanceNorm needs more than one)."""
    m = max(3, -(-at_least // stride))
    return stride * (m if m % 2 else m + 1)


def _check_channels(model: nn.Module, dims: int, channels: int, stride: tuple[int, ...], given: bool) -> Any:
    """Run one odd-multiple-of-the-stride input; return its output, or raise a one-line error naming the flag."""
    shape = (1, channels, *(_odd_multiple(s) for s in stride))
    try:
        return _forward(model, torch.zeros(shape))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        told = (f"in_channels={channels} (CLI --in-channels) was given" if given
                else f"{channels} input channel(s) were read from the model")
        raise ShapeError(f"the model does not run on a {dims}D input of {channels} channel(s) shaped {shape[2:]}: "
                         f"{first[:200]}; {told}: pass the right --in-channels/--spatial-dims") from exc


def _geometry(model: nn.Module, spatial_dims: int | None,
              in_channels: int | None) -> tuple[int, int, tuple[int, ...], Any, str]:
    dims, channels, stride = model_geometry(model, spatial_dims, in_channels)
    source = "given" if spatial_dims and in_channels else (
        "attributes" if getattr(model, "spatial_dims", None) else "first convolution")
    if dims is None or channels is None:
        dims, channels = _probe_geometry(model, dims, channels)
        source = "probing"
    if spatial_dims is not None and spatial_dims not in (1, 2, 3):
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if stride is None:
        stride = _measure_stride(model, dims, channels)
    else:
        shape = (1, channels, *(_odd_multiple(s) for s in stride))
        out = _try_forward(model, shape)
        if out is None or not _same_size(out, shape):  # a stride the layers do not show (functional pooling)
            measured = _measure_stride(model, dims, channels)
            stride = tuple(max(a, b) for a, b in zip(stride, measured))
    out = _check_channels(model, dims, channels, stride, given=in_channels is not None)
    return dims, channels, stride, out, source


def _probe_tiles(model: nn.Module, halo: tuple[int, ...], stride: tuple[int, ...], channels: int,
                 select: Any) -> TileProbe:
    """Predict two overlapping windows of a ramp + noise image and compare their shared core."""
    dims = len(stride)
    shift = tuple(round_up(16, s) for s in stride)
    window = tuple(2 * h + 2 * t for h, t in zip(halo, shift))
    size = tuple(w + t for w, t in zip(window, shift))
    generator = torch.Generator().manual_seed(7)
    ramp = torch.zeros(size)
    for axis, n in enumerate(size):
        view = [1] * dims
        view[axis] = n
        ramp = ramp + torch.linspace(0.0, 3.0, n).reshape(view)
    image = ramp + torch.randn((channels, *size), generator=generator)
    first = image[(slice(None), *(slice(0, w) for w in window))][None]
    second = image[(slice(None), *(slice(t, t + w) for t, w in zip(shift, window)))][None]
    a = select(_forward(model, first)).float().cpu()
    b = select(_forward(model, second)).float().cpu()
    # global positions [t + h, w - h) are at least h inside both windows
    core_a = a[(0, slice(None), *(slice(t + h, w - h) for t, h, w in zip(shift, halo, window)))]
    core_b = b[(0, slice(None), *(slice(h, w - h - t) for t, h, w in zip(shift, halo, window)))]
    difference = float((core_a - core_b).abs().max())
    scale = float(core_a.abs().max())
    return TileProbe(window, shift, halo, difference, scale)


_cache: OrderedDict[tuple[Any, ...], ModelInfo] = OrderedDict()
_by_object: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], tuple[Any, ...]]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def clear_model_cache() -> None:
    """Forget every description (they are otherwise kept for the 16 most recent models)."""
    with _lock:
        _cache.clear()
        _by_object.clear()


def _stamp(model: nn.Module) -> tuple[Any, ...]:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer steps, loading)."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))


def describe_model(
    model: nn.Module,
    *,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    output: OutputKey = None,
    activation: str = "auto",
    probe: bool = True,
    probe_limit: int | None = None,
) -> ModelInfo:
    """Return what seamfree needs to know about ``model``, measured once and cached.

    Parameters
    ----------
    model : nn.Module
        A seamfree model, any ``nn.Module``, a TorchScript module or a ``torch.export`` program's module.
        Its mode and parameters are left unchanged.
    spatial_dims, in_channels : int, optional
        For models whose first convolution does not tell (CLI ``--spatial-dims``, ``--in-channels``).
    output : int or str, optional
        Index or key of the segmentation among a tuple/dict output (CLI ``--output``).
    activation : {"auto", "none", "sigmoid", "softmax"}
    probe : bool
        Run the empirical tile-dependence probe (two small forward passes).
    probe_limit : int, optional
        Largest halo per axis the probe runs with (default 512 in 2D, 64 in 3D); beyond it the probe is
        skipped (a smaller halo would report a false dependence), and ``notes`` says so.

    Examples
    --------
    >>> from seamfree.models import UNet
    >>> info = describe_model(UNet(2, 1, 1, depth=2, features=4, norm="instance"))
    >>> info.verdict, info.network_stride, info.activation
    ('tile-dependent', (4, 4), 'sigmoid')
    """
    resolved = resolve_activation(model, activation)
    options = (spatial_dims, in_channels, None if output is None else str(output), probe_limit)
    stamp = _stamp(model)
    info = None
    with _lock:
        known = _by_object.get(model)
        if known is not None and known[0] == stamp:
            info = _cache.get(key := known[1] + options)
    if info is None:
        identity = (model_digest(model), _kind(model), type(model).__qualname__, str(getattr(model, "code", "")))
        key = identity + options
        with _lock:
            _by_object[model] = (stamp, identity)
            info = _cache.get(key)
        if info is None:
            info = _describe(model, identity[0], spatial_dims, in_channels, output, probe_limit)
    if probe and info.probe is None and not any(n.startswith("tile probe skipped") for n in info.notes):
        info = _with_probe(model, info, probe_limit)
    with _lock:
        _cache[key] = info
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return info if info.activation == resolved else replace(info, activation=resolved)


def _with_probe(model: nn.Module, info: ModelInfo, probe_limit: int | None) -> ModelInfo:
    """Return ``info`` with the empirical tile probe (or a note saying why it was skipped)."""
    halo = info.receptive_field.halo
    limit = probe_limit or (512 if info.spatial_dims <= 2 else 64)
    if max(halo) > limit:
        note = f"tile probe skipped: the halo {halo} exceeds {limit} voxels per axis (probe_limit)"
        return replace(info, notes=(*info.notes, note))
    tiles = _probe_tiles(model, halo, info.network_stride, info.in_channels, info.select)
    logger.info("tile probe of %s model: shared core differs by %.3g (scale %.3g)", info.kind, tiles.max_abs,
                tiles.scale)
    return replace(info, probe=tiles)


def _describe(model: nn.Module, digest: str, spatial_dims: int | None, in_channels: int | None, output: OutputKey,
              probe_limit: int | None) -> ModelInfo:
    dims, channels, stride, out, source = _geometry(model, spatial_dims, in_channels)
    selected = select_output(out, output)
    if isinstance(out, tuple | list) and isinstance(output, str):
        output = int(output)
    example_shape = (1, channels, *(_odd_multiple(s) for s in stride))
    if tuple(selected.shape[2:]) != example_shape[2:]:
        raise ShapeError(
            f"the model's output spatial shape {tuple(selected.shape[2:])} differs from its input "
            f"{example_shape[2:]}; tiled prediction needs a model that predicts every input voxel, e.g. a U-Net "
            "with 'same' padding"
        )
    notes = []
    example = torch.zeros(example_shape, device=_device(model), dtype=_dtype(model))
    audit = audit_norms(model, example)

    def pick(value: Any) -> torch.Tensor:
        return select_output(value, output)

    rf = measure_receptive_field(model, spatial_dims=dims, in_channels=channels, network_stride=stride,
                                 select=pick, audit=audit)
    if not rf.linearized:
        notes.append("compiled model: the receptive field is the gradient support of random inputs, not of a "
                     "linearized copy; diagnose's exactness check confirms the halo")
    kind = _kind(model)
    info = ModelInfo(kind, dims, channels, int(selected.shape[1]), stride, output, tuple(_describe_outputs(out)),
                     resolve_activation(model, "auto"), audit, rf, None, digest, source, tuple(notes))
    logger.info("described %s model: %dD, %d → %d channels, stride %s, halo %s, static audit %s", kind, dims,
                channels, info.out_channels, stride, rf.halo, audit.verdict)
    return info

