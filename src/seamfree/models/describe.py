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
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from seamfree.config import did_you_mean
from seamfree.errors import CheckpointError, ConfigError, ShapeError
from seamfree.layers.audit import NormAudit, audit_norms
from seamfree.models.field_cache import load_field, load_probe, store_field, store_probe
from seamfree.models.geometry import infer_geometry, model_device, model_dtype, odd_multiple
from seamfree.models.identity import static_reach, structure_digest
from seamfree.models.probe import TileProbe, probe_tiles
from seamfree.models.receptive import ReceptiveField, measure_receptive_field

__all__ = ["ACTIVATIONS", "ModelInfo", "TileProbe", "clear_model_cache", "describe_model", "model_digest",
           "resolve_activation", "select_output"]

logger = logging.getLogger(__name__)

ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
OutputKey = int | str | None

_CACHE_SIZE = 16


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
        identity = _identity(model, model_digest(model))
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


def _identity(model: nn.Module, digest: str) -> tuple[str, ...]:
    """What tells one model from another: its parameters' digest, its structure (module tree with the arguments
    that shape the computation, forward code, TorchScript graph), kind, class and package (the key of the
    in-memory cache, and of the measurements kept on disk)."""
    return (digest, structure_digest(model), _kind(model), type(model).__qualname__,
            repr(getattr(model, "seamfree_package", None)))


def _with_probe(model: nn.Module, info: ModelInfo, probe_limit: int | None) -> ModelInfo:
    """Return ``info`` with the empirical tile probe (or a note saying why it was skipped)."""
    halo = info.receptive_field.halo
    limit = probe_limit or (512 if info.spatial_dims <= 2 else 64)
    if max(halo) > limit:
        note = f"tile probe skipped: the halo {halo} exceeds {limit} voxels per axis (probe_limit)"
        return replace(info, notes=(*info.notes, note))
    key = (*_identity(model, info.digest), info.spatial_dims, info.in_channels,
           None if info.output is None else str(info.output), "tile probe", halo)
    tiles = load_probe(key, info.spatial_dims)
    if tiles is None:
        tiles = probe_tiles(model, halo, info.network_stride, info.in_channels, info.select)
        store_probe(key, tiles)
    logger.info("tile probe of %s model: shared core differs by %.3g (scale %.3g)", info.kind, tiles.max_abs,
                tiles.scale)
    return replace(info, probe=tiles)


def _check_finite(model: nn.Module) -> None:
    """CheckpointError naming the parameters or buffers that hold NaN or Inf (nothing such a model computes is
    meaningful, and its receptive field cannot be measured)."""
    bad = [name for name, value in model.state_dict().items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"the model holds NaN or Inf in {len(bad)} parameter(s)/buffer(s): "
                              f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; its training diverged or the "
                              "file is damaged: use an earlier checkpoint")


def _describe(model: nn.Module, digest: str, spatial_dims: int | None, in_channels: int | None, output: OutputKey,
              probe_limit: int | None) -> ModelInfo:
    _check_finite(model)
    dims, channels, stride, out, source = infer_geometry(model, spatial_dims, in_channels)
    selected = select_output(out, output)
    if isinstance(out, tuple | list) and isinstance(output, str):
        output = int(output)
    example_shape = (1, channels, *(odd_multiple(s) for s in stride))
    if tuple(selected.shape[2:]) != example_shape[2:]:
        raise ShapeError(
            f"the model's output spatial shape {tuple(selected.shape[2:])} differs from its input "
            f"{example_shape[2:]}; tiled prediction needs a model that predicts every input voxel, e.g. a U-Net "
            "with 'same' padding"
        )
    notes = []
    example = torch.zeros(example_shape, device=model_device(model), dtype=model_dtype(model))
    audit = audit_norms(model, example)

    def pick(value: Any) -> torch.Tensor:
        return select_output(value, output)

    cache_key = (*_identity(model, digest), dims, channels, None if output is None else str(output), audit.verdict)
    rf = load_field(cache_key, dims)
    floor = static_reach(model, dims)
    if rf is not None and any(r < f for r, f in zip(rf.radius, floor)):
        logger.warning("ignoring a cached receptive field of radius %s: the model's own convolutions reach %s; "
                       "measuring it again", rf.radius, floor)
        rf = None
    if rf is None or rf.network_stride != stride:
        rf = measure_receptive_field(model, spatial_dims=dims, in_channels=channels, network_stride=stride,
                                     select=pick, audit=audit)
        store_field(cache_key, rf)
    else:
        notes.append("receptive field read from the cache (measured by an earlier run on this model)")
    package = getattr(model, "seamfree_package", None)
    normalization = getattr(package, "normalization", None)
    if normalization:
        notes.append(f"the bioimage.io package's input normalization ({normalization['method']}) is "
                     "computed over the whole image, once, not per tile: per-tile statistics are themselves a tiling "
                     "artifact")
    declared = getattr(package, "declared_halo", None)
    if declared is not None and any(d < h for d, h in zip(declared, rf.halo)):
        notes.append(f"the bioimage.io package declares halo {tuple(declared)}, smaller than the {rf.halo} its "
                     "measured receptive field needs: consumers that trust the declaration stitch visible seams")
    if not rf.linearized:
        notes.append("compiled model: the receptive field is the gradient support of random inputs, not of a "
                     "linearized copy; diagnose's exactness check confirms the halo")
    kind = _kind(model)
    info = ModelInfo(kind, dims, channels, int(selected.shape[1]), stride, output, tuple(_describe_outputs(out)),
                     resolve_activation(model, "auto"), audit, rf, None, digest, source, tuple(notes))
    logger.info("described %s model: %dD, %d → %d channels, stride %s, halo %s, static audit %s", kind, dims,
                channels, info.out_channels, stride, rf.halo, audit.verdict)
    return info

