"""Seamless tiled prediction: ``predict(model, image, output)``, and the whole-image reference.

Data flow, one room each: open the image lazily → plan (:mod:`~seamfree.tiling.plan`: grid with halo ≥ measured
receptive field, global intensity statistics, output layout, fingerprint) → output target → engine
(:mod:`~seamfree.tiling.engine`: tiles read by a prefetch thread, batched forward in eval mode) → sink
(:mod:`~seamfree.tiling.sinks`: crop cores, or blend them with a bounded buffer) → done markers → output marked
complete. Memory is O(tile × batch + blend buffer), never O(image).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from seamfree.errors import ConfigError, OutputExistsError
from seamfree.io.lock import output_lock
from seamfree.io.readers import FrameSeries, ImageSource, open_image
from seamfree.io.safety import fingerprint_digest
from seamfree.io.writers import check_target, create_output, frame_target, recorded_fingerprint
from seamfree.models.describe import describe_model
from seamfree.models.receptive import ReceptiveField
from seamfree.tiling.engine import (
    StageSeconds,
    eval_mode,
    forward_batch,
    predict_batches,
    read_window,
    resolve_activation,
    run_tiles,
)
from seamfree.tiling.grid import Tile, TileGrid, round_up
from seamfree.tiling.near_exact import HaloCheck
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization, resolve_normalization
from seamfree.tiling.plan import (
    PredictConfig,
    PredictionPlan,
    check_model_input,
    describe,
    output_calibration,
    plan_prediction,
    zarr_options,
)
from seamfree.tiling.sharded import predict_shard, running_shards
from seamfree.tiling.shards import Shard
from seamfree.tiling.sinks import sink_for
from seamfree.tiling.specs import Activation, RuntimeSpec
from seamfree.tiling.suggest import default_memory_budget

__all__ = [
    "PredictConfig",
    "PredictionPlan",
    "PredictionReport",
    "check_model_input",
    "plan_prediction",
    "predict",
    "predict_tiles",
    "predict_whole",
    "read_window",
    "resolve_activation",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionReport:
    """What a prediction did: geometry, normalization, counts and timing."""

    grid: TileGrid
    receptive_field: ReceptiveField | None
    normalization: IntensityNormalization
    tiles_total: int
    tiles_computed: int
    seconds: float
    tiles_per_batch: int
    activation: str
    frames: int | None = None  # a time series: how many frames (the normalization is the first frame's)
    halo_check: HaloCheck | None = None  # the near-exact mode (halo="effective"): its measured error
    stages: StageSeconds | None = None  # where the wall time went (plan, read, forward, write, pyramid)
    cpu_seconds: float | None = None  # CPU of this process during the prediction (every thread)
    peak_rss_bytes: int | None = None  # this process's peak resident memory so far
    memory_budget: int | None = None  # the budget the plan was made for (bytes)

    @property
    def voxels(self) -> int:
        return math.prod(self.grid.image_shape) * (self.frames or 1)

    def summary(self) -> str:
        """One line a user can act on: throughput, CPU per voxel, memory against the budget, what bounded it."""
        parts = [f"{self.voxels / max(self.seconds, 1e-9) / 1e6:.3g} Mvoxel/s"]
        if self.cpu_seconds is not None:
            parts.append(f"{self.cpu_seconds * 1e9 / max(self.voxels, 1):.1f} CPU ns/voxel")
        if self.peak_rss_bytes is not None:
            budget = f" (memory budget {self.memory_budget / 1e6:.0f} MB)" if self.memory_budget else ""
            parts.append(f"peak {self.peak_rss_bytes / 1e6:.0f} MB resident{budget}")
        if self.stages is not None:
            shares = self.stages.to_dict()
            total = sum(shares.values()) or 1.0
            parts.append("time: " + ", ".join(f"{name} {100 * value / total:.0f} %" for name, value in
                                               sorted(shares.items(), key=lambda kv: -kv[1]) if value > 0))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.grid.image_shape), "core": list(self.grid.core), "halo": list(self.grid.halo),
            "tile_shape": list(self.grid.tile_shape), "overlap": list(self.grid.overlap),
            "network_stride": list(self.grid.network_stride), "compute_ratio": self.grid.compute_ratio,
            "receptive_field": self.receptive_field.to_dict() if self.receptive_field else None,
            "normalization": self.normalization.to_dict(), "tiles_total": self.tiles_total,
            "tiles_computed": self.tiles_computed, "seconds": self.seconds, "tiles_per_batch": self.tiles_per_batch,
            "activation": self.activation, "frames": self.frames,
            "near_exact": self.halo_check.to_dict() if self.halo_check else None,
            "stages_seconds": self.stages.to_dict() if self.stages else None,
            "bounded_by": self.stages.bounded_by() if self.stages else None, "cpu_seconds": self.cpu_seconds,
            "peak_rss_bytes": self.peak_rss_bytes, "memory_budget": self.memory_budget,
            "voxels_per_second": self.voxels / max(self.seconds, 1e-9),
        }


# True (a tqdm bar), or a callable given the tiles done, or (done, total) when it takes two arguments
ProgressOption = bool | Callable[[int], None] | Callable[[int, int], None]

def predict(
    model: nn.Module,
    image: Any,
    output: Any = None,
    *,
    config: PredictConfig | None = None,
    axes: str | None = None,
    progress: ProgressOption = False,
    report: list[PredictionReport] | None = None,
    key: str | None = None,
    shard: Shard | None = None,
    stop: Callable[[], bool] | None = None,
) -> Any:
    """Return the tiled prediction of ``model`` on ``image``, written to ``output``.

    Parameters
    ----------
    model : nn.Module
        Segmentation model with same-size output; run in eval mode (its mode is restored afterwards).
    image : array-like or path
        ``(C, *spatial)`` or ``spatial`` array, or a .npy/.zarr/.tif/.h5 path (see :func:`open_image`).
    output : None, array or path
        None: return a new numpy array; an array: written in place; a path: OME-Zarr (``.zarr``) or TIFF,
        resumable (a rerun with the same output continues where it stopped).
    config : PredictConfig, optional
        Tiling, stitching, device and output options.
    axes : str, optional
        Axis order of ``image`` (e.g. ``"YXC"``), when not channel-first. A leading ``T`` (``"TYX"``,
        ``"TCZYX"``; an OME-Zarr input with a ``t`` axis needs none) predicts a time series frame by frame into
        an output ``(T, C_out, *spatial)``.
    progress : bool or callable
        True for a tqdm progress bar; a callable receives the number of tiles done after each batch (and the
        total, when it takes two arguments). An exception it raises stops the prediction after that batch; the
        output then resumes.
    report : list, optional
        If given, a :class:`PredictionReport` is appended to it.

    key : str, optional
        Dataset inside an HDF5 file or array inside a zarr group (CLI ``--key``).
    shard : Shard, optional
        Write only share ``I`` of ``N`` of an OME-Zarr output (CLI ``--shard I/N``): the tasks of a job array
        each run one share, at once, on shared storage; the last to finish completes the output (see
        :mod:`seamfree.tiling.sharded`). Returns the output path.
    stop : callable, optional
        Asked before every batch; once it returns True the batch in flight is written and
        :class:`~seamfree.errors.Paused` raised (a rerun resumes). The CLI sets it on SIGTERM, SIGINT and SIGUSR1.

    Returns
    -------
    ndarray, zarr array or path
        Output of shape ``(C_out, *spatial)``.

    Examples
    --------
    >>> import numpy as np
    >>> from seamfree.models import UNet
    >>> net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm")
    >>> predict(net, np.random.rand(70, 50), config=PredictConfig(core=32)).shape
    (1, 70, 50)
    """
    config = config or PredictConfig()
    check_target(output)
    info = describe(model, config)
    source = open_image(image, spatial_dims=info.spatial_dims, axes=axes, key=key, frames=True)
    if shard is not None:
        return _predict_shard(model, image, source, output, config, info, shard, progress, report, stop)
    if isinstance(source, FrameSeries):
        return _predict_series(model, image, source, output, config, info, progress, report, stop)
    stages = StageSeconds()
    cpu = time.process_time()
    try:
        started = time.perf_counter()
        with output_lock(output):  # one writer per output path, taken before any work
            _refuse_running_shards(output)
            plan = plan_prediction(model, source, config, info=info, recorded=_recorded(output, config))
            stages.plan = time.perf_counter() - started
            target = create_output(output, shape=plan.output_shape, dtype=plan.output_dtype, chunks=plan.grid.core,
                                   fingerprint=plan.fingerprint, overwrite=config.overwrite,
                                   calibration=output_calibration(source, config), input_path=source.path,
                                   **zarr_options(config, plan.out_channels, model))
            tiles = list(plan.grid.tiles())
            computed = run_tiles(model, plan, source, tiles, sink_for(plan, target, source),
                                 progress=_progress(progress), stop=stop, times=stages)
            finishing = time.perf_counter()
            result = target.finalize()
            stages.pyramid = time.perf_counter() - finishing
    finally:
        if source is not image:
            source.close()
    seconds = time.perf_counter() - started
    logger.info("predicted %d of %d tiles (core %s, halo %s) in %.1f s", computed, len(tiles), plan.grid.core,
                plan.grid.halo, seconds)
    if report is not None:
        report.append(PredictionReport(plan.grid, plan.receptive_field, plan.normalization, len(tiles), computed,
                                       seconds, plan.tiles_per_batch, plan.activation, halo_check=plan.halo_check,
                                       stages=stages, cpu_seconds=time.process_time() - cpu,
                                       peak_rss_bytes=peak_rss_bytes(),
                                       memory_budget=config.memory_budget or default_memory_budget(config.device)))
    return result


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _predict_shard(model: nn.Module, image: Any, source: ImageSource | FrameSeries, output: Any,
                   config: PredictConfig, info: Any, shard: Shard, progress: ProgressOption,
                   report: list[PredictionReport] | None, stop: Callable[[], bool] | None) -> Any:
    try:
        if isinstance(source, FrameSeries):
            raise ConfigError("--shard splits one image; a time series is predicted in one process (or give each "
                              "task a frame of its own, e.g. with --axes and a frame's array)")
        done = predict_shard(model, source, output, config, shard, info=info, progress=_progress(progress),
                             stop=stop)
    finally:
        if source is not image:
            source.close()
    if report is not None:
        plan = done.plan
        report.append(PredictionReport(plan.grid, plan.receptive_field, plan.normalization, done.units,
                                       done.computed, done.seconds, plan.tiles_per_batch, plan.activation,
                                       halo_check=plan.halo_check))
    return output


def _refuse_running_shards(output: Any) -> None:
    """OutputExistsError while tasks of a job array write ``output`` (a whole run would write their units too)."""
    running = running_shards(output) if isinstance(output, str | os.PathLike) else []
    if running:
        raise OutputExistsError(
            f"output {str(output)!r} is being written by the tasks of a job array (shares {', '.join(running[:4])} "
            "running); wait for them (seamfree status), or run this command with --shard as one of them")


def _recorded(output: Any, config: PredictConfig) -> dict[str, Any] | None:
    """The fingerprint of the output being resumed (None when overwriting it: a fresh start plans afresh)."""
    return None if config.overwrite else recorded_fingerprint(output)


def _predict_series(model: nn.Module, image: Any, series: FrameSeries, output: Any, config: PredictConfig,
                    info: Any, progress: ProgressOption,
                    report: list[PredictionReport] | None, stop: Callable[[], bool] | None) -> Any:
    """Predict every frame of ``series`` as an image of its own (its own intensity statistics: what ``predict``
    gives for that frame alone, exactly) into one output ``(T, C_out, *spatial)``, frame after frame; resumable
    like one image (done markers per frame), complete only after the last frame."""
    try:
        started = time.perf_counter()
        with output_lock(output):
            # every frame's plan first (its statistics pass): the output's fingerprint covers every frame
            recorded = _recorded(output, config)
            first = plan_prediction(model, series.frame(0), config, info=info, recorded=recorded)
            # the near-exact halo is measured on the first frame and kept for all (one grid for the output)
            later = config if first.halo_check is None else replace(config, halo=first.grid.halo,
                                                                      allow_small_halo=True)
            plans = [first] + [plan_prediction(model, series.frame(t), later, info=info, recorded=recorded)
                               for t in range(1, series.frames)]
            fingerprint = {**first.fingerprint, "frames": [fingerprint_digest(plan.fingerprint) for plan in plans]}
            target = create_output(output, shape=(series.frames, *first.output_shape), dtype=first.output_dtype,
                                   chunks=first.grid.core, fingerprint=fingerprint, overwrite=config.overwrite,
                                   calibration=output_calibration(series.frame(0), config), input_path=series.path,
                                   time=series.time, **zarr_options(config, first.out_channels, model))
            tiles_per_frame = len(list(first.grid.tiles()))
            update = _progress(progress)
            computed = 0
            for t, plan in enumerate(plans):
                frame = series.frame(t)

                def frame_progress(done: int, total: int, before: int = t * tiles_per_frame) -> None:
                    if update is not None:
                        update(before + done, series.frames * tiles_per_frame)

                computed += run_tiles(model, plan, frame, list(plan.grid.tiles()),
                                      sink_for(plan, frame_target(target, t), frame), progress=frame_progress,
                                      stop=stop)
            result = target.finalize()
    finally:
        if series is not image:
            series.close()
    seconds = time.perf_counter() - started
    total = series.frames * tiles_per_frame
    logger.info("predicted %d of %d tiles in %d frames (core %s, halo %s) in %.1f s", computed, total, series.frames,
                first.grid.core, first.grid.halo, seconds)
    if report is not None:
        report.append(PredictionReport(first.grid, first.receptive_field, first.normalization, total, computed,
                                       seconds, first.tiles_per_batch, first.activation, series.frames,
                                       first.halo_check))
    return result


def _positional_count(function: Callable[..., Any]) -> int:
    """How many positional arguments ``function`` takes (a ``*args`` counts as many)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return 1
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return 2
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def _progress(progress: ProgressOption) -> Callable[[int, int], None] | None:
    """Adapt ``predict``'s progress option to the engine's ``progress(done, total)``."""
    if callable(progress):
        if _positional_count(progress) >= 2:
            return progress  # type: ignore[return-value]
        return lambda done, total: progress(done)  # type: ignore[call-arg]
    if not progress:
        return None
    from tqdm.auto import tqdm

    bars: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, initial=done, unit="tile", desc="predict"))
        bar = bars[0]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def predict_tiles(
    model: nn.Module,
    source: ImageSource,
    tiles: Sequence[Tile],
    *,
    normalization: IntensityNormalization,
    config: PredictConfig | None = None,
    tiles_per_batch: int = 1,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield ``(tile, prediction)`` for each tile: the activated prediction of its whole read window.

    The low-level step of :func:`predict` for callers that choose their own tiles. ``normalization`` must be
    resolved (see :func:`compute_normalization`); the model is put in eval mode for the duration and restored.
    """
    config = config or PredictConfig()
    info = describe(model, config)
    runtime = config.runtime.resolved(info.activation, info.output)
    for batch_tiles, predictions in predict_batches(model, source, tiles, normalization=normalization,
                                                    runtime=runtime, tiles_per_batch=tiles_per_batch):
        yield from zip(batch_tiles, predictions)


@torch.inference_mode()
def predict_whole(
    model: nn.Module,
    image: Any,
    *,
    normalization: IntensityNormalization | None = None,
    activation: Activation = "auto",
    device: str = "cpu",
    axes: str | None = None,
    output: int | str | None = None,
) -> np.ndarray:
    """Return the whole-image prediction (one forward pass): the reference tiled prediction must equal.

    The image is normalized with the same global statistics and reflect-padded at its far end to a multiple of
    the network stride, exactly as :func:`predict` pads it. Only for images that fit in memory. ``output``
    selects the segmentation among a tuple/dict model output.
    """
    info = describe_model(model, output=output, activation=activation, probe=False)
    dims, in_channels, stride = info.spatial_dims, info.in_channels, info.network_stride
    with open_image(image, spatial_dims=dims, axes=axes) as source:
        check_model_input(source, in_channels, dims)
        normalization = compute_normalization(
            source, resolve_normalization(normalization or IntensityNormalization("auto"), model))
        padded = tuple(slice(0, round_up(n, s)) for n, s in zip(source.spatial_shape, stride))
        x = normalization.apply(read_window(source, padded))[np.newaxis]
    with eval_mode(model):
        out = forward_batch(model, x, RuntimeSpec(device, activation=info.activation, output=info.output))
    crop: tuple[int | slice, ...] = (0, slice(None), *(slice(0, n) for n in source.spatial_shape))
    return out[crop]
