"""What several commands do alike: check an input, read the model options, name a new model file, run a
segmentation, reach a cluster."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seamfree.cli.options import uses_cluster
from seamfree.errors import DataError, SeamfreeError

if TYPE_CHECKING:
    from seamfree.tiling import IntensityNormalization


__all__ = ["STOP_SIGNALS", "check_input_exists", "cluster_of", "input_of", "key_of", "model_options",
           "new_model_file", "normalization_option", "run_segment", "stop_on_signals"]

# A walltime's warning (SLURM's --signal), a preemption, Ctrl-C: the run stops taking batches, writes the one in
# flight, records its progress and exits with EXIT_PAUSED; a second one stops it at once.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
SAME_SIGNAL_S = 5.0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first of :data:`STOP_SIGNALS` while the block runs (the run pauses after its batch in
    flight); the second raises KeyboardInterrupt at once. Handlers are restored afterwards."""
    stop = threading.Event()
    numbers = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread only: nothing to install
        return

    first: list[float] = []

    def handle(number: int, frame: Any) -> None:
        # the same stop delivered twice (a scheduler signals both the job's shell, which passes it on, and its
        # processes) is one request; a second one later stops at once
        if first and time.monotonic() - first[0] > SAME_SIGNAL_S:
            raise KeyboardInterrupt
        if first:
            return
        first.append(time.monotonic())
        stop.set()
        logging.getLogger("seamfree.cli").warning(
            "%s received: finishing the batch in flight, recording progress, then stopping (rerun to resume; a "
            "second signal stops at once)", signal.Signals(number).name)

    previous = {number: signal.signal(number, handle) for number in numbers}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def model_options(args: argparse.Namespace) -> dict[str, object]:
    """The describe_model options of a command (``--spatial-dims``, ``--in-channels``, ``--output``)."""
    return {"spatial_dims": args.spatial_dims, "in_channels": args.in_channels, "model_output": args.model_output}


def check_input_exists(image: Any) -> None:
    """A local input path that does not exist fails at once (URLs and remote stores are checked by their reader)."""
    text = str(image)
    if "://" in text or not isinstance(image, (str, Path)):
        return
    if not Path(text).exists():
        raise DataError(f"input {text!r} does not exist; check the path (relative paths start from "
                        f"{str(Path.cwd())!r})")


def normalization_option(args: argparse.Namespace) -> IntensityNormalization:
    """``--normalization``, else "auto" (the library resolves it: what a bioimage.io package declares, else
    percentiles), the same as Python and napari."""
    from seamfree.tiling import IntensityNormalization

    return IntensityNormalization(args.normalization or "auto")


def new_model_file(args: argparse.Namespace) -> None:
    """``--out`` of convert/recalibrate: never the input model, never an existing file without --overwrite; checked
    before any work."""
    out, source = Path(args.out), Path(args.model)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise SeamfreeError(f"--out {str(out)!r} is the input model itself; write the new model to another path "
                            "(the input stays as it was)")
    if out.is_dir():
        raise SeamfreeError(f"--out {str(out)!r} is a folder; pass the path of the new model file, e.g. "
                            f"{str(out / 'model.pt')!r}")
    if out.exists() and not args.overwrite:
        raise SeamfreeError(f"--out {str(out)!r} already exists; choose another path or pass --overwrite to "
                            "replace it")


def input_of(args: argparse.Namespace, model: Any) -> Any:
    """The input path, or, with --channels/--gray, the input opened with that channel selection."""
    if args.channels is None and not args.gray:
        return args.image
    from seamfree.io.readers import open_image
    from seamfree.models.describe import describe_model

    dims = describe_model(model, spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                          probe=False).spatial_dims
    return open_image(args.image, spatial_dims=dims, axes=args.axes, key=key_of(args), channels=args.channels,
                      gray=args.gray, frames=True)


def key_of(args: argparse.Namespace) -> str | None:
    """The member of the input to read: --key, or --series N of a bioformats2raw layout."""
    if args.series is None:
        return args.key
    if args.key is not None:
        raise SeamfreeError(f"--key {args.key!r} and --series {args.series} both choose what to read; give one")
    return str(args.series)


def cluster_of(args: argparse.Namespace) -> Any:
    from seamfree.distributed import ClusterConfig

    if args.workers is not None and args.workers < 1:
        raise SeamfreeError(f"--workers must be at least 1, got {args.workers}; leave it out to run in this process")
    return ClusterConfig(scheduler=args.scheduler, workers=args.workers or (1 if args.cluster else 2),
                         threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                         tiles_per_task=getattr(args, "tiles_per_task", 4), timeout=args.timeout,
                         tune_allocator=getattr(args, "tune_allocator", False), worker_timeout=args.worker_timeout,
                         scheduler_file=args.scheduler_file, jobqueue=args.cluster, jobs=args.jobs,
                         job_memory=args.job_memory, walltime=args.walltime, queue=args.queue, account=args.account,
                         interface=args.interface)


def run_segment(args: argparse.Namespace, prediction: Any, out: Path | None, options: dict[str, Any]) -> int:
    from seamfree.segment import SegmentConfig, segment

    config = SegmentConfig(**options)
    shard = None
    if getattr(args, "shard", None) is not None:
        from seamfree.tiling.shards import parse_shard

        shard = parse_shard(args.shard)
        if uses_cluster(args):
            raise SeamfreeError(f"--shard {args.shard} runs one task of a job array and cannot go with a dask "
                                "cluster (--workers, --scheduler, --cluster, --scheduler-file): choose one")
    if uses_cluster(args):
        from seamfree.distributed import cluster_runner

        with cluster_runner(cluster_of(args)) as run:
            result = segment(str(prediction), out, config=config, run=run)
    else:
        result = segment(str(prediction), out, config=config, shard=shard)
    if result.pending is not None:
        print(result.pending)
        return 0
    exact = ("exact (every voxel proven equal to the whole-image result)" if result.exact else
             f"{result.unverified_voxels} voxels not proven exact (see the warning)")
    print(f"wrote {result.path}: {result.objects} objects ({result.method}, blocks {result.block}, halo "
          f"{result.halo}), {exact}, {result.seconds:.1f} s")
    return 0
