"""The plan of a tiled prediction: everything decided before the first tile runs.

:class:`PredictConfig` is what a user sets, one flat frozen dataclass. The engine reads it through three narrow
views: :class:`TilingSpec` (the grid), :class:`RuntimeSpec` (how a batch of tiles runs) and :class:`OutputSpec`
(what is stored). :func:`plan_prediction` turns a config, a model and an image into a :class:`PredictionPlan`:
the grid (halo ≥ measured receptive field), the intensity statistics, the output layout and the fingerprint
that lets a later run resume the output. One process and a dask cluster share the plan, so either can resume
the other's output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from seamfree.config import apply_renamed
from seamfree.errors import ConfigError, HaloError, ShapeError
from seamfree.io.ome import NGFF_VERSIONS, Calibration
from seamfree.io.readers import ImageSource
from seamfree.io.safety import resolved_path
from seamfree.models.bioimageio import package_info
from seamfree.models.checkpoint import check_device
from seamfree.models.describe import ModelInfo, describe_model, select_output
from seamfree.models.receptive import ReceptiveField, measure_receptive_field
from seamfree.tiling.blend import BlendWindow
from seamfree.tiling.grid import TileGrid, as_axis_tuple, round_up
from seamfree.tiling.near_exact import HaloCheck, check_halo, effective_tolerance
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.specs import Activation, OutputKind, OutputSpec, RuntimeSpec, Stitching
from seamfree.tiling.stitching import STITCHINGS, stitching
from seamfree.tiling.suggest import suggest_tiling

__all__ = [
    "PredictConfig",
    "PredictionPlan",
    "TilingSpec",
    "check_model_input",
    "output_calibration",
    "plan_prediction",
]

logger = logging.getLogger(__name__)

# Settings that do not change a single output value, or that the plan records in its own terms (the grid and the
# resolved statistics): left out of the fingerprint, so that a resume may use another device or tiles per batch.
# The model's geometry (spatial_dims, in_channels) changes nothing it computes; the selected output is recorded
# as the fingerprint's "model_output" entry.
_NOT_FINGERPRINTED = ("device", "tiles_per_batch", "batch_size", "overwrite", "normalization", "memory_budget",
                      "amp", "spatial_dims", "in_channels", "model_output", "voxel_size", "unit", "pyramid",
                      "channel_names", "sharding", "tile_timing")
# The near-exact mode's default bound on max |Δ| against exact prediction (probabilities).
DEFAULT_MAX_ERROR = 1e-3

# Recorded only when not at their default, so that outputs of versions without them still resume.
# (a layout or compiled kernels change last bits, like autocast: a resume must run the same computation)
_FINGERPRINTED_IF_SET = {"labels": False, "ngff": "0.5", "max_error": DEFAULT_MAX_ERROR, "channels_last": False,
                         "compile": False}


@dataclass(frozen=True)
class TilingSpec:
    """The grid options of a prediction (see :class:`PredictConfig` for each field)."""

    core: int | tuple[int, ...] | None = None
    halo: str | int | tuple[int, ...] = "auto"
    stitching: Stitching = "crop"
    overlap: int | tuple[int, ...] | None = None
    tiles_per_batch: int | None = None
    memory_budget: int | None = None
    pinned_core: bool = False
    allow_small_halo: bool = False
    grid_offset: int | tuple[int, ...] = 0
    max_error: float = DEFAULT_MAX_ERROR
    tile_timing: bool = True


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _check_voxels(name: str, value: Any, flag: str) -> None:
    """ConfigError unless ``value`` is an int or a sequence of ints (bools and floats are no voxel counts)."""
    items = value if isinstance(value, tuple | list) else (value,)
    if not items or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"{name} must be whole voxels, an int or one int per spatial axis (CLI {flag}), got "
                          f"{value!r}; e.g. {name}=128 or {name}=(64, 128, 128)")


@dataclass(frozen=True)
class PredictConfig:
    """Options of :func:`~seamfree.predict`.

    Attributes
    ----------
    core : int or tuple, optional
        Core shape; by default chosen by :func:`suggest_tiling` from ``memory_budget``.
    halo : "auto", "effective", "effective:TOL", int or tuple
        Context on each side of a core; "auto" measures the receptive field and uses the halo it needs
        (:attr:`ReceptiveField.halo`). A smaller halo is an error in crop stitching unless ``allow_small_halo``.
        "effective[:TOL]" is the near-exact mode: the effective receptive field at gradient tolerance TOL (default
        1e-3), its error against the exact halo measured on sample windows before prediction and kept at most
        ``max_error`` by widening the halo (:mod:`seamfree.tiling.near_exact`).
    max_error : float
        Bound on the max |Δ| of the near-exact mode against exact prediction, on the activated output (CLI
        ``--max-error``).
    stitching : {"crop", "blend"}
        "crop" is exact when halo ≥ receptive field; "blend" averages overlapping cores with weights.
    overlap : int or tuple
        Core overlap for blending (default: a quarter of the core).
    blend_window : {"linear", "gaussian"}
    tiles_per_batch : int, optional
        Tiles per forward pass (default from :func:`suggest_tiling`).
    device : str
        "cpu", "cuda", "cuda:1", ...
    amp : bool
        Mixed precision (bfloat16) on CUDA; ignored on CPU.
    tta : bool
        Average predictions over all flips of the spatial axes (exact under tiling too).
    channels_last : bool
        Batches in channels-last layout (``channels_last_3d`` in 3D): cuDNN's NHWC kernels, often faster with
        ``amp`` on recent GPUs (CLI ``--channels-last``; :mod:`seamfree.tiling.device`).
    compile : bool
        Run ``torch.compile`` of the model; the first batch of each shape compiles (CLI ``--compile``).
    normalization : IntensityNormalization
        Input intensity normalization; statistics computed once from the whole image unless given.
    activation : {"auto", "none", "sigmoid", "softmax"}
        Applied to the model output; "auto": sigmoid/softmax for seamfree models that output logits,
        none for other models.
    output_kind : {"float32", "uint8", "mask"}
        Probabilities, probabilities scaled to 0..255, or a mask (threshold for one channel, argmax otherwise).
    threshold : float
        Threshold for ``output_kind="mask"``.
    memory_budget : int, optional
        Bytes the tiles of one batch may use (activations), for the automatic core and tiles per batch.
    tile_timing : bool
        Let the automatic core time a few candidate tiles once per model and device and take the fastest
        (:func:`suggest_tiling`; CLI ``--no-tile-timing`` keeps the fewest computed voxels without timing).
    pinned_core : bool
        Error (instead of rounding up) when ``core`` is not a multiple of the network stride.
    allow_small_halo : bool
        Accept a halo smaller than the receptive field (not exact; for demonstrations and comparisons).
    overwrite : bool
        Delete an existing output path first instead of resuming into it.
    grid_offset : int or tuple
        Shift of the core boundaries (crop stitching), see :meth:`TileGrid.create`; diagnostics use it to put
        the seams elsewhere.
    spatial_dims, in_channels : int, optional
        The model's input, for models whose first convolution does not tell (CLI ``--spatial-dims``,
        ``--in-channels``).
    model_output : int or str, optional
        Index or key of the segmentation among a tuple/dict model output (CLI ``--output``).
    voxel_size, unit : optional
        Voxel size (one value, or one per spatial axis) and space unit written into the output's metadata for an
        input that records none (CLI ``--voxel-size``, ``--unit``); an input's own calibration wins.
    pyramid : bool
        Write the multiscale pyramid of an OME-Zarr output once level 0 is complete (CLI ``--no-pyramid``).
    labels : bool
        Also write the mask (``threshold``, or the argmax of several channels) as an OME-Zarr label image
        ``labels/mask`` next to the probabilities (CLI ``--labels``); a ``output_kind="mask"`` output is itself
        a label image.
    channel_names : sequence of str, optional
        Names of the output channels in the OME metadata (CLI ``--channel-names``).
    ngff : {"0.5", "0.4"}
        OME-NGFF version of an OME-Zarr output: 0.5 (zarr v3, sharded) or 0.4 (zarr v2) for older tools
        (CLI ``--ngff``).
    sharding : bool
        Store level 0 as shards of one tile core holding viewer-sized chunks (NGFF 0.5; CLI ``--no-sharding``
        makes each core one chunk).
    batch_size : int, optional
        Deprecated name of ``tiles_per_batch``.
    """

    core: int | tuple[int, ...] | None = None
    halo: str | int | tuple[int, ...] = "auto"
    stitching: Stitching = "crop"
    overlap: int | tuple[int, ...] | None = None
    blend_window: BlendWindow = "linear"
    tiles_per_batch: int | None = None
    device: str = "cpu"
    amp: bool = False
    tta: bool = False
    normalization: IntensityNormalization = field(default_factory=IntensityNormalization)
    activation: Activation = "auto"
    output_kind: OutputKind = "float32"
    threshold: float = 0.5
    memory_budget: int | None = None
    pinned_core: bool = False
    allow_small_halo: bool = False
    overwrite: bool = False
    grid_offset: int | tuple[int, ...] = 0
    spatial_dims: int | None = None
    in_channels: int | None = None
    model_output: int | str | None = None
    voxel_size: float | tuple[float, ...] | None = None
    unit: str | None = None
    pyramid: bool = True
    labels: bool = False
    channel_names: tuple[str, ...] | None = None
    ngff: str = "0.5"
    sharding: bool = True
    max_error: float = DEFAULT_MAX_ERROR
    tile_timing: bool = True
    channels_last: bool = False
    compile: bool = False
    batch_size: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        apply_renamed(self, "batch_size", "tiles_per_batch")
        mode = stitching(self.stitching)
        if self.tiles_per_batch is not None and self.tiles_per_batch < 1:
            raise ConfigError(f"tiles_per_batch must be >= 1, got {self.tiles_per_batch}")
        # checked here, before any model is described or any image read: a typo fails in a second, not minutes
        given: Any = self.normalization
        if isinstance(given, str):  # a method name: its statistics computed from the image
            object.__setattr__(self, "normalization", IntensityNormalization(given))  # type: ignore[arg-type]  # checked by it
        if not isinstance(self.normalization, IntensityNormalization):
            raise ConfigError(f"normalization must be an IntensityNormalization or a method name, got "
                              f"{self.normalization!r}; e.g. normalization='percentile'")
        for name, flag in (("core", "--core"), ("overlap", "--overlap")) + (
                (("halo", "--halo"),) if not isinstance(self.halo, str) else ()):
            if getattr(self, name) is not None:
                _check_voxels(name, getattr(self, name), flag)
        if self.core is not None and min(_as_tuple(self.core)) < 1:
            raise ConfigError(f"core must be positive voxels per axis (CLI --core), got {self.core}; leave it out "
                              "to let seamfree choose")
        if not isinstance(self.halo, str) and min(_as_tuple(self.halo)) < 0:
            raise ConfigError(f"halo must be non-negative voxels per side (CLI --halo), got {self.halo}; leave it "
                              "out for 'auto' (the measured receptive field)")
        if self.overlap is not None and not mode.overlap:
            raise ConfigError(f"overlap={self.overlap} (CLI --overlap) is the core overlap of stitching='blend'; "
                              "crop stitching has none: pass stitching='blend' (CLI --stitching blend) or drop it")
        if self.overlap is not None and min(_as_tuple(self.overlap)) < 0:
            raise ConfigError(f"overlap must be >= 0 voxels per axis, got {self.overlap}")
        if self.ngff not in NGFF_VERSIONS:
            raise ConfigError(f"ngff (CLI --ngff) must be one of {', '.join(NGFF_VERSIONS)}, got {self.ngff!r}")
        if self.labels and self.output_kind == "mask":
            raise ConfigError("labels=True (CLI --labels) writes a mask next to the probabilities; with "
                              "output_kind='mask' the output is the mask already: drop one of them")
        if isinstance(self.halo, str) and self.halo != "auto" and effective_tolerance(self.halo) is None:
            raise ConfigError(f"halo must be 'auto', 'effective', 'effective:TOL' or voxels per side, got "
                              f"{self.halo!r}")
        if effective_tolerance(self.halo) is not None and not mode.exact:
            raise ConfigError(f"halo {self.halo!r} (the near-exact mode) measures its error against exact crop "
                              "stitching; use it with stitching='crop'")
        if not 0.0 < self.max_error < math.inf:
            raise ConfigError(f"max_error (CLI --max-error) must be a positive bound on max |Δ|, got "
                              f"{self.max_error!r}")
        # the specs validate their own fields
        _ = self.runtime, self.output

    @property
    def tiling(self) -> TilingSpec:
        """The grid options."""
        return TilingSpec(self.core, self.halo, self.stitching, self.overlap, self.tiles_per_batch,
                          self.memory_budget, self.pinned_core, self.allow_small_halo, self.grid_offset,
                          self.max_error, self.tile_timing)

    @property
    def runtime(self) -> RuntimeSpec:
        """How a batch runs (``activation`` may still be "auto": the plan resolves it for the model)."""
        return RuntimeSpec(self.device, self.amp, self.tta, self.activation, self.model_output,
                           channels_last=self.channels_last, compile=self.compile)

    @property
    def output(self) -> OutputSpec:
        """What is stored."""
        return OutputSpec(self.output_kind, self.threshold)


@dataclass(frozen=True)
class PredictionPlan:
    """Everything decided before the first tile runs: geometry, statistics, output layout, fingerprint.

    Made by :func:`plan_prediction`; shared by :func:`~seamfree.predict` and the distributed runner, so that both
    write the same output (and either can resume the other's). It holds no model, so it travels to workers.
    """

    grid: TileGrid
    receptive_field: ReceptiveField | None
    tiles_per_batch: int
    runtime: RuntimeSpec
    output: OutputSpec
    stitching: Stitching
    blend_window: BlendWindow
    out_channels: int
    normalization: IntensityNormalization
    fingerprint: dict[str, Any]
    model: ModelInfo | None = None
    halo_check: HaloCheck | None = None  # the near-exact mode's measured error

    @property
    def activation(self) -> str:
        """The resolved activation applied to the model output."""
        return self.runtime.activation

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the stored output, ``(C_stored, *spatial)``."""
        return (self.output.stored_channels(self.out_channels), *self.grid.image_shape)

    @property
    def output_dtype(self) -> np.dtype:
        """dtype of the stored output."""
        return self.output.dtype


def check_model_input(source: ImageSource, in_channels: int, spatial_dims: int) -> None:
    """Raise ShapeError unless the image has the model's number of spatial axes and input channels."""
    if source.spatial_dims != spatial_dims:
        raise ShapeError(
            f"the image has {source.spatial_dims} spatial dimensions (shape {source.shape}), the model expects "
            f"{spatial_dims}; pass axes=... (CLI --axes) if an axis was misread"
        )
    if source.shape[0] != in_channels:
        raise ShapeError(
            f"the image has {source.shape[0]} channel(s) (shape {source.shape}), the model expects "
            f"{in_channels}; select or stack channels, or pass axes=... if the channel axis was misread"
        )


def output_calibration(source: ImageSource, config: PredictConfig) -> Calibration:
    """The output's voxel size, origin and units: the input's, completed by ``voxel_size``/``unit``."""
    size = config.voxel_size
    sizes = None if size is None else ((size,) if isinstance(size, int | float) else tuple(size))
    return source.calibration.with_defaults(sizes, config.unit, source.spatial_dims)


def zarr_options(config: PredictConfig, out_channels: int, model: nn.Module | None = None) -> dict[str, Any]:
    """How an OME-Zarr output of ``config`` is laid out and described: pyramid, labels, channel names (the
    config's, else those a bioimage.io ``model`` declares), NGFF version, sharding (TIFF outputs use the names)."""
    spec = config.output
    names = config.channel_names
    stored = spec.stored_channels(out_channels)
    if names is not None and len(names) != stored:
        raise ConfigError(f"channel_names (CLI --channel-names) gives {len(names)} names {list(names)}, the output "
                          f"has {stored} channels; give one name per channel")
    package = package_info(model) if model is not None else None
    declared = package.channel_names if package is not None else None
    if names is None and declared is not None and len(declared) == stored and spec.kind != "mask":
        names = declared
    mask = spec.kind == "mask"
    labels_from = None
    if config.labels:
        scale = 255.0 if spec.kind == "uint8" else 1.0
        labels_from = partial(_mask_of, OutputSpec("mask", config.threshold), scale)
    return {"pyramid": config.pyramid, "downsampling": "stride" if mask else "mean", "channel_names": names,
            "label_values": max(out_channels, 2) if mask else None, "labels_from": labels_from,
            "ngff": config.ngff, "sharding": config.sharding}


def _mask_of(spec: OutputSpec, scale: float, block: np.ndarray) -> np.ndarray:
    """The mask of a block of stored probabilities (uint8 ones divided by ``scale`` = 255 first)."""
    return spec.convert(block.astype(np.float32) / np.float32(scale) if scale != 1.0 else block)


def describe(model: nn.Module, config: PredictConfig) -> ModelInfo:
    """The model's description with the config's geometry, output and activation options."""
    return describe_model(model, spatial_dims=config.spatial_dims, in_channels=config.in_channels,
                          output=config.model_output, activation=config.activation)


def plan_prediction(model: nn.Module, source: ImageSource, config: PredictConfig,
                    normalization: IntensityNormalization | None = None,
                    info: ModelInfo | None = None, recorded: dict[str, Any] | None = None) -> PredictionPlan:
    """Return the plan of a tiled prediction of ``source`` (``normalization``: statistics already computed;
    ``info``: the model's description, made from the config's options if not given; ``recorded``: the
    fingerprint of the output being resumed, whose core and batch replace the defaults, so that a resume never
    depends on the memory of the moment or of another machine)."""
    check_device(config.device)
    info = info or describe(model, config)
    check_model_input(source, info.in_channels, info.spatial_dims)
    normalization = normalization or compute_normalization(source, config.normalization)
    runtime = config.runtime.resolved(info.activation, info.output)
    effective = _effective_halo(model, info, config.tiling, recorded)
    grid, rf, tiles_per_batch = _resolve_grid(model, info, source, config.tiling, config.device, recorded, effective,
                                              runtime.amp)
    check = None
    if effective is not None:
        check = _near_exact(model, info, source, config.tiling, normalization, runtime, effective, len(grid))
        if check.halo != effective:  # widened: the tiles are sized again for it
            grid, rf, tiles_per_batch = _resolve_grid(model, info, source, config.tiling, config.device, recorded,
                                                      check.halo, runtime.amp)
    _check_halo_vs_rf(grid, info.receptive_field, config.tiling)
    return PredictionPlan(grid, rf, tiles_per_batch, runtime, config.output, config.stitching, config.blend_window,
                          info.out_channels, normalization,
                          _fingerprint(source, info, config, grid, normalization, runtime, tiles_per_batch), info,
                          check)


def _effective_halo(model: nn.Module, info: ModelInfo, tiling: TilingSpec,
                    recorded: dict[str, Any] | None) -> tuple[int, ...] | None:
    """The near-exact mode's starting halo: the effective receptive field rounded up to the stride (the halo an
    output being resumed recorded, when it lies between that and the exact one); None for any other halo."""
    tolerance = effective_tolerance(tiling.halo)
    if tolerance is None:
        return None
    rf, stride = info.receptive_field, info.network_stride
    field = rf
    if tolerance != rf.tolerance:
        field = measure_receptive_field(model, spatial_dims=info.spatial_dims, in_channels=info.in_channels,
                                        network_stride=stride, select=partial(_select, output=info.output),
                                        tolerance=tolerance)
    effective = tuple(min(round_up(r, s), h) for r, s, h in zip(field.effective_radius, stride, rf.halo))
    halo = _recorded_halo(recorded, info.spatial_dims)
    if halo is not None and all(e <= h <= x for e, h, x in zip(effective, halo, rf.halo)):
        logger.info("resuming with the near-exact halo %s recorded in the output", halo)
        return halo
    return effective


def _near_exact(model: nn.Module, info: ModelInfo, source: ImageSource, tiling: TilingSpec,
                normalization: IntensityNormalization, runtime: RuntimeSpec, halo: tuple[int, ...],
                tiles: int) -> HaloCheck:
    """The near-exact halo's error against the exact one, measured (widened to the bound); nothing to measure
    when one tile covers the image (its prediction is the whole image's)."""
    tolerance = effective_tolerance(tiling.halo)
    assert tolerance is not None
    if info.tile_dependent:
        logger.warning("this model's predictions depend on the tile (%s): the near-exact halo bounds the error "
                       "against exact-halo tiles, which themselves have seams (run `seamfree diagnose`)",
                       info.evidence)
    exact = info.receptive_field.halo
    if tiles == 1:
        check = HaloCheck(tolerance, halo, exact, halo, tiling.max_error, 0.0, 0, 0, 0, ((halo, 0.0),))
    else:
        check = check_halo(model, source, normalization, runtime, halo=halo, exact=exact,
                           stride=info.network_stride, max_error=tiling.max_error, tolerance=tolerance)
    logger.info("%s", check.summary())
    return check


def _select(value: Any, output: Any) -> Any:
    return select_output(value, output)


def _recorded_halo(recorded: dict[str, Any] | None, dims: int) -> tuple[int, ...] | None:
    """The halo an output being resumed was predicted with (None where it does not say)."""
    grid = (recorded or {}).get("grid") or {}
    halo = grid.get("halo") if isinstance(grid, dict) else None
    if not isinstance(halo, list) or len(halo) != dims or not all(isinstance(h, int) and h >= 0 for h in halo):
        return None
    return tuple(halo)


def _recorded_plan(recorded: dict[str, Any] | None, dims: int) -> tuple[tuple[int, ...] | None, int | None]:
    """The core and tiles per batch an output being resumed was planned with (None where it does not say)."""
    grid = (recorded or {}).get("grid") or {}
    core = grid.get("core") if isinstance(grid, dict) else None
    batch = ((recorded or {}).get("runtime") or {}).get("tiles_per_batch")
    cores = tuple(core) if isinstance(core, list) and len(core) == dims else ()
    valid = bool(cores) and all(isinstance(c, int) and c > 0 for c in cores)
    return (cores if valid else None), (int(batch) if isinstance(batch, int) and batch > 0 else None)


def _resolve_grid(model: nn.Module, info: ModelInfo, source: ImageSource, tiling: TilingSpec,
                  device: str, recorded: dict[str, Any] | None = None, near_exact: tuple[int, ...] | None = None,
                  amp: bool = False) -> tuple[TileGrid, ReceptiveField | None, int]:
    dims, stride = source.spatial_dims, info.network_stride
    rf = None
    if near_exact is not None:
        rf = replace(info.receptive_field, context=near_exact)  # suggest_tiling sizes the tiles for this halo
        halo = near_exact
    elif tiling.halo == "auto":
        rf = info.receptive_field
        halo = rf.halo
        if info.tile_dependent:
            logger.warning(
                "this model's predictions depend on the tile (%s): tiled prediction cannot be exact and seams are "
                "expected (run `seamfree diagnose`); halo %s covers only edge effects", info.evidence, halo
            )
    else:
        assert not isinstance(tiling.halo, str)  # "effective" came as near_exact
        halo = as_axis_tuple(tiling.halo, dims, "halo")
    core, tiles_per_batch = tiling.core, tiling.tiles_per_batch
    recorded_core, recorded_batch = _recorded_plan(recorded, dims)
    if (core is None and recorded_core is not None) or (tiles_per_batch is None and recorded_batch is not None):
        logger.info("resuming with the plan recorded in the output: core %s, %s tile(s) per batch",
                    recorded_core if core is None else core, recorded_batch if tiles_per_batch is None
                    else tiles_per_batch)
        core = recorded_core if core is None else core
        tiles_per_batch = recorded_batch if tiles_per_batch is None else tiles_per_batch
    if core is None or tiles_per_batch is None:
        suggestion = suggest_tiling(model, source.spatial_shape, memory_budget=tiling.memory_budget, device=device,
                                    receptive_field=rf or ReceptiveField(halo, halo, stride, False, 0.0), info=info,
                                    timed=tiling.tile_timing, amp=amp)
        core = suggestion.core if core is None else core
        tiles_per_batch = suggestion.tiles_per_batch if tiles_per_batch is None else tiles_per_batch
    core_t = as_axis_tuple(core, dims, "core")
    overlap: int | tuple[int, ...] = 0
    if stitching(tiling.stitching).overlap:
        overlap = tiling.overlap if tiling.overlap is not None else tuple(
            round_up(c // 4, s) for c, s in zip(core_t, stride))
    grid = TileGrid.create(source.spatial_shape, core_t, halo, network_stride=stride, overlap=overlap,
                           offset=tiling.grid_offset, pinned=tiling.pinned_core)
    return grid, rf, int(tiles_per_batch)


def _check_halo_vs_rf(grid: TileGrid, measured: ReceptiveField, tiling: TilingSpec) -> None:
    if not stitching(tiling.stitching).exact or tiling.allow_small_halo or isinstance(tiling.halo, str):
        return  # "auto" is the exact halo; "effective" has its error measured (near_exact)
    small = [h < r and c + 2 * h < p for h, r, c, p in zip(grid.halo, measured.halo, grid.core,
                                                            grid.padded_shape)]
    if any(small):
        raise HaloError(
            f"halo {grid.halo} is smaller than the halo {measured.halo} that this model's receptive field "
            f"(radius {measured.radius}) needs; pass halo >= {measured.halo} (or halo='auto'), or "
            "allow_small_halo=True (CLI: --allow-small-halo) to accept seams"
        )


def _input_entry(source: ImageSource, stitching: str) -> dict[str, Any]:
    """The input as the fingerprint records it: its resolved path, shape and dtype. Its content is checked block by
    block: each crop block's marker holds the digest of the input it was predicted from, each blend cell's the
    digest of the inputs of its tiles, compared on resume. Blend outputs also keep the digest of a sample (kept so
    that outputs written before cells recorded their inputs still resume)."""
    entry: dict[str, Any] = {"path": resolved_path(source.path), "shape": list(source.shape),
                             "dtype": str(source.dtype)}
    if source.channels is not None or source.gray:  # recorded only when used: older outputs still resume
        entry["channels"] = {"selected": None if source.channels is None else list(source.channels),
                             "gray": source.gray}
    if STITCHINGS[stitching].overlap:
        sample = source.read(tuple(slice(0, min(s, 64)) for s in source.spatial_shape))
        entry["sample_sha256"] = hashlib.sha256(np.ascontiguousarray(sample).tobytes()).hexdigest()
    return entry


def _fingerprint(source: ImageSource, info: ModelInfo, config: PredictConfig, grid: TileGrid,
                 normalization: IntensityNormalization, runtime: RuntimeSpec, tiles_per_batch: int) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_FINGERPRINTED
                and not (k in _FINGERPRINTED_IF_SET and v == _FINGERPRINTED_IF_SET[k])}
    fingerprint = {
        "input": _input_entry(source, config.stitching),
        "model": info.digest,
        "settings": json.loads(json.dumps(settings, default=str)),
        "grid": {"core": list(grid.core), "halo": list(grid.halo), "overlap": list(grid.overlap)},
        "normalization": normalization.to_dict(),
        "activation": runtime.activation,
        # batches of another size run other convolution kernels (last-bit differences, ~1e-7), and bfloat16
        # autocast changes values: a resume must use the same, or it would stitch two computations
        "runtime": {"tiles_per_batch": tiles_per_batch,
                    "amp": bool(config.amp and config.device.startswith("cuda"))},
    }
    if runtime.output is not None:
        fingerprint["model_output"] = runtime.output
    return fingerprint
