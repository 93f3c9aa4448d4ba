"""Tiled prediction on a dask.distributed cluster: tasks that own whole output chunks.

The driver plans the prediction exactly as :func:`seamfree.predict` does (same grid, statistics, fingerprint),
creates the OME-Zarr output, and submits one task per group of tiles not yet done, keeping a bounded window of
tasks on the cluster (a finished task is released and the next submitted). The output's chunks are the
tile cores, so a task owns the chunks of its tiles and no two tasks ever write the same chunk. A task reads its
tiles with their halos from the shared input, runs the model (loaded once per worker process and cached, not
shipped with every task), writes each core, then creates the core's done marker. The result is identical to
single-process prediction (bitwise on CPU with the same batch size), and either can resume the other.

Fault tolerance comes from the markers and from dask: a task interrupted by a lost worker is rerun elsewhere
(skipping the tiles it had finished); a driver killed at any moment leaves an output that says "incomplete"
and resumes when the same command is run again. The intensity statistics are computed in a distributed pass
over the input's chunks (one task per group of slabs, merged in slab order: the same numbers as one sequential
pass).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seamfree.distributed.cluster import ClusterConfig, connect
from seamfree.distributed.watchdog import WorkerWatchdog, completed, gathered
from seamfree.errors import ConfigError, DataError
from seamfree.io.files import file_sha256
from seamfree.io.lock import output_lock
from seamfree.io.pyramid import Runner
from seamfree.io.readers import ImageSource, open_image
from seamfree.io.safety import file_identity
from seamfree.io.writers import ZarrBlockWriter, ZarrOutput, create_output, output_format, recorded_fingerprint
from seamfree.models.checkpoint import load_model
from seamfree.tiling.engine import run_tiles
from seamfree.tiling.grid import Tile
from seamfree.tiling.near_exact import HaloCheck
from seamfree.tiling.normalize import IntensityNormalization, SlabStatistics, iter_slabs, resolve_normalization
from seamfree.tiling.plan import (
    PredictConfig,
    PredictionPlan,
    describe,
    output_calibration,
    plan_prediction,
    zarr_options,
)
from seamfree.tiling.sinks import CropSink
from seamfree.tiling.stitching import stitching

__all__ = ["DistributedReport", "TaskSpec", "cluster_runner", "predict_distributed"]

logger = logging.getLogger(__name__)

# An input chunk this many times larger than a tile makes every task decompress far more than it reads.
MAX_CHUNK_TO_TILE_RATIO = 16
# Tasks submitted ahead of the finished ones (at least 4 per worker thread): enough to keep every thread busy,
# few enough that the scheduler's state stays small whatever the volume.
TASKS_IN_FLIGHT = 256


@dataclass(frozen=True)
class DistributedReport:
    """Summary of a distributed run."""

    output: Path
    tiles_total: int
    tiles_computed: int
    tasks: int
    seconds: float
    voxels_per_second: float
    workers: int
    halo_check: HaloCheck | None = None  # the near-exact mode's measured error (halo="effective")


# Per worker process: models and opened inputs, keyed by what identifies them (loaded once, not per task).
_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_SOURCES: dict[tuple[Any, ...], ImageSource] = {}


def _worker_model(path: str, digest: str, threads: int, trust_code: bool) -> torch.nn.Module:
    key = (path, digest)
    if key not in _MODELS:
        torch.set_num_threads(threads)
        if file_sha256(Path(path)) != digest:
            raise DataError(f"the model file {path} seen by this worker differs from the driver's; the workers "
                            "must see the same file (shared storage)")
        _MODELS[key] = load_model(path, trust_code=trust_code)  # in eval mode
    return _MODELS[key]


def _worker_source(image: str, axes: str | None, dims: int, key: str | None = None,
                   channels: tuple[int, ...] | None = None, gray: bool = False) -> ImageSource:
    # keyed by the file's identity as this worker sees it now: an input replaced at the same path between two
    # runs on a persistent cluster is opened again, never read from the handle of the old file
    known = (image, file_identity(image), axes, dims, key, channels, gray)
    if known not in _SOURCES:
        for stale in [k for k in _SOURCES if k[0] == image]:
            _SOURCES.pop(stale).close()
        _SOURCES[known] = open_image(image, spatial_dims=dims, axes=axes, key=key, channels=channels, gray=gray)
    return _SOURCES[known]


@dataclass(frozen=True)
class TaskSpec:
    """What every prediction task of one run shares (shipped once per task, small: the plan holds no model).

    Attributes
    ----------
    model, digest : str
        The model file every worker loads (once per process) and its sha256, checked against the driver's.
    image, axes, dataset, channels, gray : ...
        The input as :func:`~seamfree.io.readers.open_image` reads it (``dataset`` is its ``key``: dask keeps
        ``key`` for a task's name).
    output : str
        The OME-Zarr output; each task writes only the chunks of its tiles.
    plan : PredictionPlan
    threads : int
        torch threads per worker process.
    trust_code : bool
        The consent of ``--trust-code``, for the workers' loading too.
    """

    model: str
    digest: str
    image: str
    axes: str | None
    output: str
    plan: PredictionPlan
    threads: int
    trust_code: bool = False
    dataset: str | None = None
    channels: tuple[int, ...] | None = None
    gray: bool = False


def _run_task(tiles: list[Tile], spec: TaskSpec) -> int:
    """Worker task: predict and write a group of tiles (each owning its output chunk); return how many ran."""
    net = _worker_model(spec.model, spec.digest, spec.threads, spec.trust_code)
    source = _worker_source(spec.image, spec.axes, spec.plan.grid.spatial_dims, spec.dataset, spec.channels,
                            spec.gray)
    return run_tiles(net, spec.plan, source, tiles, CropSink(ZarrBlockWriter(spec.output), spec.plan.output))


def _slab_statistics(windows: list[tuple[slice, ...]], *, image: str, axes: str | None, dims: int,
                     channels: int, total: int, exact: bool, stride: int,
                     dataset: str | None = None, selected: tuple[int, ...] | None = None,
                     gray: bool = False) -> list[SlabStatistics]:
    """Worker task: statistics of each slab separately (merged in order by the driver); ``selected``: the input
    channels read (``channels`` is how many the statistics have)."""
    source = _worker_source(image, axes, dims, dataset, selected, gray)
    result = []
    for window in windows:
        statistics = SlabStatistics(channels, total, exact, stride)
        statistics.add(source, window)
        result.append(statistics)
    return result


def _check_input(source: ImageSource, plan: PredictionPlan) -> None:
    if source.spatial_chunks:
        chunk, tile = math.prod(source.spatial_chunks), math.prod(plan.grid.tile_shape)
        if chunk > MAX_CHUNK_TO_TILE_RATIO * tile:
            raise DataError(
                f"the input's chunks {source.spatial_chunks} are {chunk / tile:.0f}× larger than a tile "
                f"{plan.grid.tile_shape}: every task would read far more than it needs; rechunk the input (e.g. to "
                f"{plan.grid.core}) or choose a larger core"
            )


def _normalization(client: Any, image: str, axes: str | None, source: ImageSource, dims: int,
                   normalization: IntensityNormalization, watchdog: WorkerWatchdog,
                   key: str | None) -> IntensityNormalization:
    if normalization.resolved:
        return normalization
    template = SlabStatistics.for_source(source)
    windows = list(iter_slabs(source))
    groups = [windows[i:i + 8] for i in range(0, len(windows), 8)]
    futures = client.map(_slab_statistics, groups, image=image, axes=axes, dims=dims, channels=template.channels,
                         total=template.total, exact=template.histograms is not None, stride=template.stride,
                         dataset=key, selected=source.channels, gray=source.gray, pure=False)
    for slabs in gathered(client, futures, watchdog):  # in slab order: identical to one sequential pass
        for slab in slabs:
            template.merge(slab)
    return template.finish(normalization)


def predict_distributed(
    model: str | os.PathLike[str],
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    config: PredictConfig | None = None,
    cluster: ClusterConfig | None = None,
    axes: str | None = None,
    progress: bool | Callable[[int, int], None] = False,
    trust_code: bool = False,
    key: str | None = None,
    channels: Sequence[int] | None = None,
    gray: bool = False,
) -> DistributedReport:
    """Predict ``image`` with the model at ``model`` into the OME-Zarr ``output`` on a dask cluster.

    Same parameters and same result as :func:`seamfree.predict` (crop stitching); rerun to resume. Returns a
    summary (tiles, tasks, time, throughput). ``trust_code`` lets the driver and every worker load a
    ``torch.export`` program or a pickled module (code from the file runs on each of them). ``key`` names the
    dataset of an HDF5 file or the array of a zarr group, as in :func:`seamfree.predict`; ``channels`` and
    ``gray`` select or merge the input's channels, as in :func:`~seamfree.io.readers.open_image`.
    """
    config = config or PredictConfig()
    cluster = cluster or ClusterConfig()
    if not isinstance(image, str | os.PathLike):
        raise ConfigError(f"distributed prediction reads the input from a path every worker can open, got a "
                          f"{type(image).__name__}; save it first (e.g. as .zarr) or use seamfree.predict")
    if not stitching(config.stitching).distributed:
        raise ConfigError("distributed prediction uses crop stitching (exact, chunk-owning tasks); "
                          f"got stitching={config.stitching!r}")
    if output_format(output) != "zarr":
        raise ConfigError(f"distributed output must be OME-Zarr (a .zarr path), got {str(output)!r}")
    model_path = Path(model)
    if not model_path.is_file():
        raise DataError(f"model file {str(model_path)!r} not found; workers load the model from a file")
    started = time.perf_counter()
    net = load_model(model_path, trust_code=trust_code)
    info = describe(net, config)
    dims = info.spatial_dims
    image_path = os.fspath(image)
    with output_lock(output), open_image(image_path, spatial_dims=dims, axes=axes, key=key, channels=channels,
                                                 gray=gray) as source:
        client, local = connect(cluster)
        watchdog = WorkerWatchdog(client, cluster.worker_timeout)
        try:
            normalization = _normalization(client, str(image_path), axes, source, dims,
                                           resolve_normalization(config.normalization, net), watchdog, key)
            plan = plan_prediction(net, source, config, normalization, info=info,
                                   recorded=None if config.overwrite else recorded_fingerprint(output))
            _check_input(source, plan)
            target = create_output(output, shape=plan.output_shape, dtype=plan.output_dtype, chunks=plan.grid.core,
                                   fingerprint=plan.fingerprint, overwrite=config.overwrite,
                                   calibration=output_calibration(source, config), input_path=source.path,
                                   **zarr_options(config, plan.out_channels, net))
            todo = [t for t in plan.grid.tiles() if not target.is_done(t.index)]
            spec = TaskSpec(str(model_path.resolve()), file_sha256(model_path), str(image_path), axes,
                            str(Path(output).resolve()), plan, cluster.threads_per_worker, trust_code, key,
                            source.channels, source.gray)
            computed, tasks = _submit(client, todo, spec, cluster, progress, len(plan.grid), watchdog)
            assert isinstance(target, ZarrOutput)
            target.finalize(run=_on_cluster(client, watchdog))  # pyramid and labels: blocks spread as tasks
            workers = len(client.scheduler_info().get("workers", {}))
        finally:
            client.close()
            if local is not None:
                local.close()
        seconds = time.perf_counter() - started
        voxels = math.prod(source.spatial_shape)
    report = DistributedReport(Path(output), len(plan.grid), computed, tasks, seconds,
                               voxels * computed / max(len(plan.grid), 1) / max(seconds, 1e-9), workers,
                               plan.halo_check)
    logger.info("distributed prediction: %d of %d tiles in %d tasks on %d workers, %.1f s (%.3g voxels/s)",
                computed, len(plan.grid), tasks, workers, seconds, report.voxels_per_second)
    return report


@contextlib.contextmanager
def cluster_runner(cluster: ClusterConfig | None = None) -> Iterator[Runner]:
    """A :data:`~seamfree.io.pyramid.Runner` on the dask cluster ``cluster`` describes (a LocalCluster started
    for the duration of the block, or the scheduler at ``cluster.scheduler``), for blockwise passes whose tasks
    write to storage every worker shares: ``seamfree.segment(..., run=runner)``."""
    client, local = connect(cluster or ClusterConfig())
    try:
        yield _on_cluster(client, WorkerWatchdog(client, (cluster or ClusterConfig()).worker_timeout))
    finally:
        client.close()
        if local is not None:
            local.close()


def _on_cluster(client: Any, watchdog: WorkerWatchdog) -> Runner:
    """A :data:`~seamfree.io.pyramid.Runner` that maps batches of blocks over the cluster and waits for them."""
    def run(task: Callable[[list[Any]], Any], batches: list[list[Any]]) -> None:
        if batches:
            gathered(client, client.map(task, batches, pure=False), watchdog)
    return run


def _submit(client: Any, todo: Sequence[Tile], spec: TaskSpec, cluster: ClusterConfig,
            progress: bool | Callable[[int, int], None], total: int, watchdog: WorkerWatchdog) -> tuple[int, int]:
    """Run the tasks of ``todo`` with at most a window of them known to the scheduler at any time.

    A finished task is released at once (the scheduler and the worker forget it) and the next one submitted, so the
    cluster's bookkeeping does not grow with the volume: a terabyte at 4 tiles per task is ~10⁶ tasks.
    """
    from distributed import as_completed

    groups = [list(todo[i:i + cluster.tiles_per_task]) for i in range(0, len(todo), cluster.tiles_per_task)]
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
    window = max(TASKS_IN_FLIGHT, 4 * threads)
    sizes: dict[str, int] = {}

    def submit(group: list[Tile]) -> Any:
        future = client.submit(_run_task, group, spec, pure=False)
        sizes[future.key] = len(group)
        return future

    waiting = iter(groups)
    # results come through as_completed's own gather (raising a task's error): a bare future.result() per future
    # once failed in CI with "Event ... bound to a different event loop" after a worker was killed
    running = as_completed([submit(group) for group in itertools.islice(waiting, window)], with_results=True)
    done = total - len(todo)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=done, unit="tile", desc="predict (dask)")
    computed = 0
    for future, result in completed(running, watchdog):
        computed += result
        size = sizes.pop(future.key)
        done += size
        future.release()
        following = next(waiting, None)
        if following is not None:
            running.add(submit(following))
        if bar is not None:
            bar.update(size)
        elif callable(progress):
            progress(done, total)
    if bar is not None:
        bar.close()
    return computed, len(groups)
