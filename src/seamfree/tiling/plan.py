"""The plan of a tiled prediction: everything decided before the first tile runs.

:class:`PredictConfig` is what a user sets, one flat frozen dataclass (:mod:`~seamfree.tiling.options`). The
engine reads it through three narrow views: :class:`TilingSpec` (the grid), :class:`RuntimeSpec` (how a batch of
tiles runs) and :class:`OutputSpec` (what is stored). :func:`plan_prediction` turns a config, a model and an
image into a :class:`PredictionPlan`: the grid (halo ≥ measured receptive field), the intensity statistics, the
output layout and the fingerprint that lets a later run resume the output. One process and a dask cluster share
the plan, so either can resume the other's output.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from seamfree.errors import ConfigError, HaloError, ShapeError
from seamfree.io.ome import Calibration
from seamfree.io.readers import ImageSource
from seamfree.io.safety import resolved_path
from seamfree.models.bioimageio import package_info
from seamfree.models.checkpoint import check_device
from seamfree.models.describe import ModelInfo, describe_model, select_output
from seamfree.models.receptive import ReceptiveField, measure_receptive_field
from seamfree.tiling.blend import BlendWindow
from seamfree.tiling.grid import TileGrid, as_axis_tuple, round_up
from seamfree.tiling.near_exact import HaloCheck, check_halo
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization, resolve_normalization
from seamfree.tiling.options import (
    FINGERPRINTED_IF_SET,
    NOT_FINGERPRINTED,
    PredictConfig,
    TilingSpec,
)
from seamfree.tiling.specs import OutputSpec, RuntimeSpec, Stitching, effective_tolerance
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
            f"{in_channels}; choose channels with channels=[...] (CLI --channels 0 or 0,2), read their mean with "
            "gray=True (CLI --gray, e.g. an RGB image for a one-channel model), or pass axes=... (CLI --axes) if "
            "the channel axis was misread"
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
        scale = spec.full_scale or 1.0
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
    normalization = normalization or compute_normalization(source, resolve_normalization(config.normalization, model))
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
                                    timed=tiling.tile_timing, amp=amp, chunks=source.spatial_chunks)
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
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_FINGERPRINTED
                and not (k in FINGERPRINTED_IF_SET and v == FINGERPRINTED_IF_SET[k])}
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
