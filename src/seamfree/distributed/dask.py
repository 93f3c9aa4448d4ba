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
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seamfree.allocator import allocator_environment
from seamfree.distributed.watchdog import WorkerWatchdog, completed, gathered
from seamfree.errors import ConfigError, DataError, require
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
from seamfree.tiling.normalize import IntensityNormalization, SlabStatistics, iter_slabs
from seamfree.tiling.plan import (
    PredictConfig,
    PredictionPlan,
    describe,
    output_calibration,
    plan_prediction,
    zarr_options,
)
from seamfree.tiling.sinks import CropSink

__all__ = ["ClusterConfig", "DistributedReport", "predict_distributed", "start_local_cluster"]

logger = logging.getLogger(__name__)

_MEMORY = re.compile(r"\d+(\.\d+)?\s*([kKMGTP]i?B|[kKMGTP]|B)?")
_ADDRESS = re.compile(r"([a-z]+://)?[\w.\-\[\]:]+:\d+")
# An input chunk this many times larger than a tile makes every task decompress far more than it reads.
MAX_CHUNK_TO_TILE_RATIO = 16
# Tasks submitted ahead of the finished ones (at least 4 per worker thread): enough to keep every thread busy,
# few enough that the scheduler's state stays small whatever the volume.
TASKS_IN_FLIGHT = 256


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how to run.

    Attributes
    ----------
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``; any deployment: dask-jobqueue,
        dask-kubernetes, manual). None starts a LocalCluster.
    workers : int
        LocalCluster worker processes.
    threads_per_worker : int
        Torch threads per worker (and dask threads; one task runs per thread).
    memory_limit : str or int
        LocalCluster memory limit per worker ("auto", "1GiB", bytes).
    tiles_per_task : int
        Tiles (= output chunks) per task: more amortizes scheduling, fewer spreads work and loses less on failure.
    timeout : float
        Seconds to wait for the scheduler.
    worker_timeout : float
        Seconds the scheduler may be without any worker while tasks wait, before the run stops with an error
        (the workers died, or none were started); a rerun resumes.
    tune_allocator : bool
        Spawn LocalCluster workers with seamfree's glibc settings (:mod:`seamfree.allocator`): faster
        3D forward passes, but a worker then keeps its high-water mark of memory, which dask counts as unmanaged
        memory. Give such workers room: at 1 GiB per worker, dask paused them (80 % of the limit) and the run
        stalled. Off by default; for other deployments set :data:`~seamfree.allocator.ALLOCATOR_ENVIRONMENT`
        in the workers' environment.
    """

    scheduler: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    tiles_per_task: int = 4
    timeout: float = 30.0
    tune_allocator: bool = False
    worker_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.worker_timeout > 0:
            raise ConfigError(f"worker_timeout (CLI --worker-timeout) must be a positive number of seconds, got "
                              f"{self.worker_timeout}")
        if self.workers < 1 or self.threads_per_worker < 1 or self.tiles_per_task < 1:
            raise ConfigError(f"workers, threads_per_worker and tiles_per_task must be >= 1, got {self.workers}, "
                              f"{self.threads_per_worker}, {self.tiles_per_task}")
        if isinstance(self.memory_limit, str) and self.memory_limit != "auto" and not _MEMORY.fullmatch(
                self.memory_limit.strip()):
            raise ConfigError(f"memory_limit (CLI --memory-limit) must be 'auto', bytes or a size like '2GiB' or "
                              f"'1.5 GB', got {self.memory_limit!r}")
        if self.scheduler is not None and not _ADDRESS.fullmatch(self.scheduler):
            raise ConfigError(f"scheduler (CLI --scheduler) must be an address like tcp://host:8786, got "
                              f"{self.scheduler!r}")


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


def _run_task(tiles: list[Tile], *, model: str, digest: str, image: str, axes: str | None, output: str,
              plan: PredictionPlan, threads: int, trust_code: bool = False, dataset: str | None = None,
              channels: tuple[int, ...] | None = None, gray: bool = False) -> int:
    """Worker task: predict and write a group of tiles (each owning its output chunk); return how many ran.
    (``dataset`` is the ``key`` of :func:`open_image`: dask's submit and map keep ``key`` for the task's name.)"""
    net = _worker_model(model, digest, threads, trust_code)
    source = _worker_source(image, axes, plan.grid.spatial_dims, dataset, channels, gray)
    return run_tiles(net, plan, source, tiles, CropSink(ZarrBlockWriter(output), plan.output))


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


def start_local_cluster(cluster: ClusterConfig) -> Any:
    """Start the LocalCluster ``cluster`` describes (worker processes, threads, memory limit).

    With ``cluster.tune_allocator``, workers are spawned with
    :func:`~seamfree.allocator.allocator_environment` (glibc reads it at process start), replacing dask's
    own default, which trims everything above 64 KiB and makes every tile fault its memory back in.
    """
    require("distributed", "dask")
    import dask

    from distributed import LocalCluster

    tuned = allocator_environment() if cluster.tune_allocator else {}
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **tuned}
    # the nanny takes a variable from this process's os.environ before dask's configuration, writes it there
    # before each spawn and leaves it there (distributed 2026.8): set ours, then restore the environment, or a
    # later cluster and every later subprocess would inherit them
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(tuned)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return LocalCluster(n_workers=cluster.workers, threads_per_worker=cluster.threads_per_worker,
                                memory_limit=cluster.memory_limit, processes=True,
                                dashboard_address=":0")  # a free port: never collide with a running cluster
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _client(cluster: ClusterConfig) -> tuple[Any, Any]:
    require("distributed", "dask")
    from distributed import Client

    if cluster.scheduler is None:
        local = start_local_cluster(cluster)
        return Client(local), local
    # Client's own timeout covers the TCP connect, not a peer that accepts and never answers the handshake: the
    # connection is made in a thread given a deadline, so that nothing waits without a word
    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            box["client"] = Client(cluster.scheduler, timeout=cluster.timeout)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=connect, name="seamfree-connect", daemon=True)
    thread.start()
    thread.join(cluster.timeout + 2.0)
    if thread.is_alive():
        raise DataError(f"the dask scheduler at {cluster.scheduler!r} accepted the connection but did not answer "
                        f"within {cluster.timeout:.0f} s (--timeout): it is not a dask scheduler, or it is "
                        "overloaded; check the address (the scheduler prints it at start), or raise --timeout")
    error = box.get("error")
    if isinstance(error, OSError | TimeoutError):
        raise DataError(f"could not reach the dask scheduler at {cluster.scheduler!r} within {cluster.timeout:.0f} s "
                        f"({error}); check the address and that the scheduler is running") from error
    if error is not None:
        raise error
    client = box["client"]
    try:
        _check_worker_versions(client, cluster.scheduler)
    except BaseException:
        client.close()
        raise
    return client, None


def _worker_version() -> str:
    from seamfree._version import __version__ as version

    return str(version)


def _check_worker_versions(client: Any, address: str) -> None:
    """DataError when a worker of the cluster runs another seamfree version (its tiles might differ in the last
    bit, or its tasks fail in ways that say nothing): one version on every worker, said by address."""
    from seamfree._version import __version__ as version

    try:
        seen = client.run(_worker_version)
    except Exception as exc:
        raise DataError(f"the workers of the dask scheduler at {address!r} cannot run seamfree ({exc}); install "
                        f"seamfree {version} in the workers' environment") from exc
    other = {worker: v for worker, v in seen.items() if v != version}
    if other:
        shown = ", ".join(f"{w} has {v}" for w, v in list(other.items())[:3])
        raise DataError(f"{len(other)} worker(s) of the dask scheduler at {address!r} run another seamfree version "
                        f"than this {version} ({shown}); install the same version on every worker and the driver")


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
    if config.stitching != "crop":
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
        client, local = _client(cluster)
        watchdog = WorkerWatchdog(client, cluster.worker_timeout)
        try:
            normalization = _normalization(client, str(image_path), axes, source, dims, config.normalization,
                                           watchdog, key)
            plan = plan_prediction(net, source, config, normalization, info=info,
                                   recorded=None if config.overwrite else recorded_fingerprint(output))
            _check_input(source, plan)
            target = create_output(output, shape=plan.output_shape, dtype=plan.output_dtype, chunks=plan.grid.core,
                                   fingerprint=plan.fingerprint, overwrite=config.overwrite,
                                   calibration=output_calibration(source, config), input_path=source.path,
                                   **zarr_options(config, plan.out_channels, net))
            todo = [t for t in plan.grid.tiles() if not target.is_done(t.index)]
            computed, tasks = _submit(client, todo, model_path, str(image_path), axes, Path(output), plan,
                                      cluster, progress, len(plan.grid), trust_code, watchdog,
                                      {"dataset": key, "channels": source.channels, "gray": source.gray})
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
    client, local = _client(cluster or ClusterConfig())
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


def _submit(client: Any, todo: Sequence[Tile], model_path: Path, image: str,
            axes: str | None, output: Path, plan: PredictionPlan, cluster: ClusterConfig,
            progress: bool | Callable[[int, int], None], total: int, trust_code: bool,
            watchdog: WorkerWatchdog, reading: dict[str, Any]) -> tuple[int, int]:
    """Run the tasks of ``todo`` with at most a window of them known to the scheduler at any time (``reading``:
    what each worker reads of the input: dataset, channels, gray).

    A finished task is released at once (the scheduler and the worker forget it) and the next one submitted, so the
    cluster's bookkeeping does not grow with the volume: a terabyte at 4 tiles per task is ~10⁶ tasks.
    """
    from distributed import as_completed

    groups = [list(todo[i:i + cluster.tiles_per_task]) for i in range(0, len(todo), cluster.tiles_per_task)]
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
    window = max(TASKS_IN_FLIGHT, 4 * threads)
    kwargs = {"model": str(model_path.resolve()), "digest": file_sha256(model_path), "image": image, "axes": axes,
              "output": str(output.resolve()), "plan": plan, "threads": cluster.threads_per_worker,
              "trust_code": trust_code, **reading}
    sizes: dict[str, int] = {}

    def submit(group: list[Tile]) -> Any:
        future = client.submit(_run_task, group, pure=False, **kwargs)
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
