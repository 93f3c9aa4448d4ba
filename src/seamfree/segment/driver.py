"""``segment``: instance labels of a prediction of any size, block by block, equal to the whole-image result.

Data flow (DESIGN: plan blocks with a halo → per-block labels → per-block face tables → one merge on the driver
→ relabel pass → OME-Zarr labels):

- ``components``: the blockwise connected components of the foreground (:mod:`seamfree.segment.components`),
  then a pass that writes each block's object ids. Exact: equal to ``scipy.ndimage.label`` of the whole image
  up to a permutation of ids, whatever the block size.
- ``watershed`` / ``distance``: first the components of the mask, whose bounding boxes give the size of the
  largest object and so the halo that makes every crop hold every object it touches (``halo="auto"``, capped at
  ``max_halo``); then the blockwise components of the seeds (each block's seeds computed on its crop): global
  seed ids; then each block floods its crop from those ids and writes its window. A block's result equals the
  whole-image result for every region of the mask that lies inside its crop; the voxels of regions that reach
  a cut face of the crop are counted (``unverified_voxels``) and reported, never hidden.

Every pass is resumable (tables and done markers beside the output, removed when it is complete) and runs here
or, with ``run``, as block tasks on dask workers that share the storage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from seamfree._version import __version__
from seamfree.errors import ConfigError, DataError, ShapeError, require
from seamfree.io.lock import output_lock
from seamfree.io.pyramid import Runner
from seamfree.io.safety import fingerprint_digest, resolved_path
from seamfree.io.zarr_output import is_seamfree_zarr, seamfree_attrs
from seamfree.segment.blocks import BlockGrid
from seamfree.segment.components import blockwise_components, global_labels, prepare_scratch, run_here
from seamfree.segment.methods import METHOD_KINDS, Method, Prediction
from seamfree.segment.output import BlockWriter, LabelTarget
from seamfree.segment.settings import DEFAULT_BLOCK, SegmentConfig
from seamfree.segment.shares import ShareRunner, SharesPending
from seamfree.tiling.shards import Shard

__all__ = ["SegmentConfig", "SegmentResult", "segment"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class SegmentResult:
    """What :func:`segment` did: the labels (a zarr array, or numpy for an in-memory result) and how exact."""

    labels: Any
    objects: int
    method: str
    block: tuple[int, ...]
    halo: tuple[int, ...]
    halo_needed: tuple[int, ...]
    unverified_voxels: int
    seconds: float
    path: Path | None = None
    notes: tuple[str, ...] = field(default=())
    pending: str | None = None  # a share of a job array that left the rest to another task: what is left

    @property
    def complete(self) -> bool:
        """Whether the labels are written (False: a share whose task left the rest to another)."""
        return self.pending is None

    @property
    def exact(self) -> bool:
        """Whether every voxel is proven equal to the whole-image result (up to a permutation of ids)."""
        return self.unverified_voxels == 0

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "method": self.method, "block": list(self.block), "halo": list(self.halo),
                "halo_needed": list(self.halo_needed), "unverified_voxels": self.unverified_voxels,
                "exact": self.exact, "seconds": round(self.seconds, 3), "path": None if self.path is None else
                str(self.path), "notes": list(self.notes)}


def segment(prediction: Any, output: str | Path | None = None, *, method: str | None = None,
            config: SegmentConfig | None = None, run: Runner | None = None,
            shard: Shard | None = None) -> SegmentResult:
    """Instance labels of ``prediction``, block by block, equal to the whole-image result (see the module).

    Parameters
    ----------
    prediction : path or array
        A prediction written by ``seamfree predict`` (OME-Zarr of any size), another zarr/TIFF/HDF5/npy file, or
        an array ``(C, *spatial)`` (or ``spatial`` for one channel).
    output : path, optional
        A ``.zarr`` to write the labels to (an OME-Zarr label image). Default: next to an OME-Zarr prediction,
        as its label image ``labels/NAME``; in memory for an array.
    method : {"components", "watershed", "distance"}, optional
        The method (replaces ``config.method``).
    config : SegmentConfig, optional
        The method's parameters, blocks and halo.
    run : Runner, optional
        Spreads the block tasks over workers sharing the storage (``seamfree.distributed.cluster_runner``).
    shard : Shard, optional
        One task of a job array (CLI ``--shard I/N``): labels its share of the blocks in the first pass (the
        blockwise components, the bulk of the reading); the task that finds every share of it done joins the
        objects across blocks and writes the labels (``result.pending`` says what a task left to others).

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((40, 40), np.float32); p[2:10, 2:30] = 0.9; p[20:30, 5:8] = 0.8
    >>> result = segment(p, method="components", config=SegmentConfig(block=16))
    >>> result.objects, result.exact, int(result.labels.max())
    (2, True, 2)
    """
    started = time.perf_counter()
    config = config or SegmentConfig()
    if method is not None:
        config = SegmentConfig(**{**asdict(config), "method": method})
    source = _open(prediction, config)
    spatial = tuple(int(s) for s in source.spatial_shape)
    dims = len(spatial)
    if config.connectivity > dims:
        raise ConfigError(f"connectivity must be between 1 and {dims} for {dims}D labels, got {config.connectivity}")
    steps = _method(source, config, prediction)
    block = _per_axis(config.block or DEFAULT_BLOCK.get(dims, 256), dims, "block")
    block = tuple(min(b, s) for b, s in zip(block, spatial))
    target = LabelTarget.choose(prediction, output, config)
    fingerprint = json.loads(json.dumps({  # as stored: lists, not tuples
        "input": _input_entry(source, prediction), "segment": config.fingerprinted(), "block": list(block),
        "seamfree": __version__.split("+")[0]}))
    if shard is not None:
        return _segment_share(steps, config, spatial, block, target, fingerprint, run or run_here, shard, started)
    with output_lock(target.lock):
        done = target.finished(fingerprint)
        if done is not None:
            logger.info("%s is complete (same settings): nothing to do", target.path)
            return _done_result(done, block, target.path)
        scratch = target.scratch(fingerprint)
        try:
            result = _segment(steps, config, spatial, block, scratch, target, fingerprint, run or run_here)
        finally:
            if target.path is None:
                shutil.rmtree(scratch, ignore_errors=True)
    return SegmentResult(**{**result.__dict__, "seconds": time.perf_counter() - started})


def _done_result(done: tuple[Any, dict[str, Any]], block: tuple[int, ...], path: Path | None) -> SegmentResult:
    labels, summary = done
    return SegmentResult(labels, int(summary.get("objects", 0)), str(summary.get("method", "")), block,
                         tuple(summary.get("halo", ())), tuple(summary.get("halo_needed", ())),
                         int(summary.get("unverified_voxels", 0)), 0.0, path)


def _segment_share(method: Method, config: SegmentConfig, spatial: tuple[int, ...], block: tuple[int, ...],
                   target: LabelTarget, fingerprint: dict[str, Any], run: Runner, shard: Shard,
                   started: float) -> SegmentResult:
    """One task of a job array (see :func:`segment`'s ``shard``)."""
    if target.path is None or target.lock is None:
        raise ConfigError("--shard splits a segmentation written to storage every task shares: segment a prediction "
                          "file (an OME-Zarr), not an array in memory")
    if config.overwrite:
        raise ConfigError("--overwrite with --shard would let every task delete the others' work: remove the old "
                          "labels once before starting the tasks")
    with contextlib.ExitStack() as held:
        with output_lock(target.lock, role="plan", wait_for=("plan", "finalize")):
            done = target.finished(fingerprint)
            if done is not None:
                return _done_result(done, block, target.path)
            scratch = target.scratch(fingerprint)
            # the first pass's scratch made once here: tasks never race to create it
            prepare_scratch(scratch / ("mask" if method.kind.seeded else "objects"),
                            BlockGrid(spatial, block, (0,) * len(spatial)))
            held.enter_context(output_lock(target.lock, part=f"segment-{target.name}-shard-{shard.index}-of-"
                                           f"{shard.count}", role="shard"))
        runner = ShareRunner(shard, scratch / "shards" / str(shard.count), run, lambda: held.enter_context(
            output_lock(target.lock, role="finalize", wait_for=("plan",))))
        try:
            result = _segment(method, config, spatial, block, scratch, target, fingerprint, runner)
        except SharesPending as pending:
            logger.debug("%s", pending)  # said by the result (the CLI prints it)
            return SegmentResult(None, 0, method.name, block, (), (), 0, time.perf_counter() - started,
                                 target.path, pending=str(pending))
    return SegmentResult(**{**result.__dict__, "seconds": time.perf_counter() - started})


def _segment(method: Method, config: SegmentConfig, spatial: tuple[int, ...], block: tuple[int, ...],
             scratch: Path, target: LabelTarget, fingerprint: dict[str, Any], run: Runner) -> SegmentResult:
    dims = len(spatial)
    flat = BlockGrid(spatial, block, (0,) * dims)
    notes: list[str] = []
    if not method.kind.seeded:
        objects = blockwise_components(scratch / "objects", flat, method.mask_of_block,
                                       connectivity=config.connectivity, min_size=config.min_size, run=run)
        halo = needed = (0,) * dims
        grid, task = flat, partial(relabel_task, root=str(scratch / "objects"))
    else:
        mask = blockwise_components(scratch / "mask", flat, method.mask_of_block, connectivity=config.connectivity,
                                    run=run)
        largest = mask.extents.max(axis=0) if mask.objects else np.zeros(dims, np.int64)
        needed = tuple(int(max(e - 1, 0)) + method.reach for e in largest)
        cap = _per_axis(config.max_halo or tuple(max(b // 2, 1) for b in block), dims, "max_halo")
        halo = (tuple(min(n, c) for n, c in zip(needed, cap)) if config.halo == "auto"
                else _per_axis(config.halo, dims, "halo"))  # type: ignore[arg-type]
        if any(h < n for h, n in zip(halo, needed)):
            notes.append(f"the largest object spans {tuple(int(e) for e in largest)} voxels and needs halo {needed}; "
                         f"halo {halo} is used (max_halo caps it): voxels of larger objects are counted as "
                         "unverified")
        grid = BlockGrid(spatial, block, halo)
        objects = blockwise_components(scratch / "seeds", grid, method.seeds_of_block,
                                       connectivity=config.connectivity, run=run)
        task = partial(flood_task, method=method, root=str(scratch / "seeds"))
    dtype = np.uint32 if objects.objects < 2**32 - 1 else np.uint64
    source = method.prediction.source
    writer = target.open(spatial, block, dtype, fingerprint, None if source is None else source.calibration)
    pending = [index for index in grid if not writer.is_done(index)]
    run(partial(task, grid=grid, output=target.worker_path, markers=target.markers_path, local=writer.local),
        [pending[i:i + 4] for i in range(0, len(pending), 4)])
    unverified = sum(_unverified(writer, index) for index in grid)
    summary = {"objects": objects.objects, "halo": list(halo), "halo_needed": list(needed),
               "unverified_voxels": unverified, "method": method.name}
    labels = writer.finalize(summary, None if run is run_here else run)
    if unverified:
        notes.append(f"{unverified} voxels belong to regions of the mask that reach beyond their block's crop: "
                     f"they may differ from the whole-image result; pass halo >= {needed} for a proven result")
    for note in notes:
        logger.warning("%s", note)
    return SegmentResult(labels, objects.objects, method.name, block, halo, needed, unverified, 0.0, target.path,
                         tuple(notes))


def _unverified(writer: Any, index: tuple[int, ...]) -> int:
    record = writer.record(index) or {}
    return int(record.get("unverified", 0))


def relabel_task(jobs: list[tuple[int, ...]], *, grid: BlockGrid, root: str, output: str | None,
                 markers: str | None, local: Any = None) -> int:
    """A task: write the object ids of the blocks ``jobs`` (``components``); return how many."""
    scratch, offsets, final, writer = _task_state(root, output, markers, local)
    for index in jobs:
        window = grid.window(index)
        labels = global_labels(np.asarray(scratch[window]), window, grid, offsets, final)
        writer.put(index, window, labels, 0)
    return len(jobs)


def flood_task(jobs: list[tuple[int, ...]], *, grid: BlockGrid, method: Method, root: str, output: str | None,
               markers: str | None, local: Any = None) -> int:
    """A task: flood the crops of the blocks ``jobs`` from the global seed ids and write their windows."""
    scratch, offsets, final, writer = _task_state(root, output, markers, local)
    for index in jobs:
        crop = grid.crop(index)
        seeds = global_labels(np.asarray(scratch[crop]), crop, grid, offsets, final)
        labels, unverified = method.flood(grid, index, seeds)
        writer.put(index, grid.window(index), labels, unverified)
    return len(jobs)


def _task_state(root: str, output: str | None, markers: str | None, local: Any) -> tuple[Any, np.ndarray,
                                                                                        np.ndarray, Any]:
    """What a writing task reads: the scratch labels of a labelling, its offsets and object ids, and its writer."""
    zarr = require("zarr", "zarr")
    scratch = zarr.open_array(str(Path(root) / "local.zarr"), mode="r")  # type: ignore[attr-defined]
    offsets, final = np.load(Path(root) / "offsets.npy"), np.load(Path(root) / "final.npy")
    return scratch, offsets, final, local or BlockWriter(output, markers)


def _open(prediction: Any, config: SegmentConfig) -> Any:
    from seamfree.io.readers import open_image

    dims = config.spatial_dims
    if isinstance(prediction, np.ndarray):
        if dims is None and prediction.ndim == 3:
            raise ConfigError(f"an array of shape {prediction.shape} is (C, Y, X) or (Z, Y, X); pass spatial_dims=2 "
                              "or spatial_dims=3")
        dims = dims or {2: 2, 4: 3}.get(prediction.ndim)
        if prediction.ndim == dims:
            prediction = prediction[np.newaxis]  # spatial only: one channel
    try:
        source = open_image(prediction, key=config.key, spatial_dims=dims, axes=config.axes)
    except ShapeError:
        if dims is not None or config.axes is not None:
            raise
        # a stored (C, Z, Y, X) array without axis metadata: four axes can only be channels and a volume
        return open_image(prediction, key=config.key, spatial_dims=3)
    if dims is None and config.axes is None and source.channel_axis is None and len(source.shape) == 4 \
            and source.shape[1] <= _FEW_SECTIONS:
        raise ConfigError(
            f"{source.where} has shape {tuple(source.data.shape)} and no axis metadata: is it {source.shape[1]} "
            f"channels of a 2D image (e.g. foreground and boundary) or a volume of {source.shape[1]} sections? "
            "Pass spatial_dims=2 (CLI --spatial-dims 2) or axes='CYX' for channels, spatial_dims=3 for a volume")
    return source


_FEW_SECTIONS = 4  # a stored (N, Y, X) array with N at most this is ambiguous: channels or sections


def _input_entry(source: Any, prediction: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": resolved_path(source.path), "shape": list(source.shape),
                             "dtype": str(source.dtype)}
    if isinstance(prediction, str | Path) and is_seamfree_zarr(Path(prediction)):
        mark = seamfree_attrs(Path(prediction)) or {}
        if mark.get("status") != "complete":
            raise DataError(f"the prediction {str(prediction)!r} is not complete; finish it first (rerun its "
                            "seamfree predict command, which resumes)")
        if isinstance(mark.get("fingerprint"), dict):
            entry["prediction"] = fingerprint_digest(mark["fingerprint"])  # another prediction: another input
    return entry


def _per_axis(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * dims if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(values) != dims:
        raise ConfigError(f"{name} needs one value or {dims} (one per spatial axis), got {value}")
    return values


def _method(source: Any, config: SegmentConfig, given: Any) -> Method:
    """The method with its channels resolved against the prediction's (one line naming the options when not)."""
    channels = int(source.shape[0])
    foreground, boundary = config.foreground_channel, config.boundary_channel
    for name, value in (("foreground_channel", foreground), ("boundary_channel", boundary)):
        if value is not None and not 0 <= value < channels:
            raise ConfigError(f"{name} (CLI --{name.replace('_', '-')}) {value} does not exist: the prediction "
                              f"{source.where} has {channels} channel(s) (0..{channels - 1})")
    if not METHOD_KINDS[config.method].boundary:
        if foreground is None and channels != 1:
            raise ConfigError(f"method {config.method!r} reads one foreground channel, and the prediction "
                              f"{source.where} has {channels}; choose it with foreground_channel (CLI "
                              "--foreground-channel)")
        foreground = 0 if foreground is None else foreground
    else:
        if channels == 1 and foreground is None and boundary is None:
            boundary = 0  # a boundary map (membranes): the mask is the whole image
        elif boundary is None or (foreground is None and channels > 2):
            if channels == 2 and foreground is None and boundary is None:
                foreground, boundary = 0, 1
            else:
                raise ConfigError(f"method 'watershed' reads a boundary channel (and a foreground channel); the "
                                  f"prediction {source.where} has {channels} channels: choose them with "
                                  "--foreground-channel and --boundary-channel")
    path = source.path if isinstance(source.path, str) and Path(source.path).exists() else None
    divisor = 255.0 if np.dtype(source.dtype) == np.uint8 and not _is_mask(given) else 1.0
    prediction = Prediction(path, config.key, len(source.spatial_shape), channels, divisor, source)
    # anisotropic voxels: distances in units of the finest axis' voxel (min_radius stays in voxels)
    sampling = (tuple(float(v) / min(source.scale) for v in source.scale)
                if source.scale and min(source.scale) > 0 and METHOD_KINDS[config.method].distance else None)
    return Method(config.method, prediction, foreground, boundary, config.threshold, config.seed_threshold,
                  config.min_distance, config.min_radius, sampling, config.connectivity)


def _is_mask(given: Any) -> bool:
    """A seamfree mask output (values 0/1 in uint8, an image-label) rather than probabilities × 255."""
    if not isinstance(given, str | Path) or not Path(given).is_dir():
        return False
    attrs = seamfree_attrs(Path(given))
    settings = ((attrs or {}).get("fingerprint") or {}).get("settings", {})
    return settings.get("output_kind") == "mask"
