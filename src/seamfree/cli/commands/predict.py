"""``seamfree predict MODEL IMAGE OUT``: seamless tiled prediction of an image of any size (here, or on dask)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seamfree.cli.commands.common import (
    check_input_exists,
    cluster_of,
    input_of,
    key_of,
    model_options,
    normalization_option,
    run_segment,
    stop_on_signals,
)
from seamfree.cli.options import (
    add_cluster_options,
    add_input_options,
    add_model_options,
    add_renamed,
    add_trust_code,
    float_tuple,
    halo_value,
    int_tuple,
    name_list,
    positive_float,
    uses_cluster,
)
from seamfree.errors import SeamfreeError
from seamfree.segment.methods import METHODS
from seamfree.tiling.stitching import CROP, STITCHINGS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the command's subparsers."""
    p = subparsers.add_parser("predict", help="seamless tiled prediction of a 2D/3D image of any size")
    p.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    p.add_argument("image", help="input: .zarr/OME-Zarr, .tif, .h5 (with --key) or .npy")
    p.add_argument("out", type=Path, help="output: .zarr (OME-Zarr) or .tif; rerun to resume")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, CYX, YXC (default: channel-first); a "
                   "leading T (TYX, TCZYX) predicts a time series frame by frame into a T axis of the output")
    add_input_options(p)
    p.add_argument("--core", type=int_tuple, help="core shape, e.g. 512 or 32,256,256 (default: from memory)")
    p.add_argument("--pin-core", action="store_true", help="error if --core is not a multiple of the stride")
    p.add_argument("--halo", type=halo_value, help="halo per side (default: the exact halo of the measured receptive "
                   "field); effective[:TOL]: the near-exact mode, the effective receptive field at gradient "
                   "tolerance TOL (default 1e-3), its error against the exact halo measured first")
    p.add_argument("--max-error", type=positive_float, default=1e-3,
                   help="near-exact mode: the largest max |Δ| against exact prediction accepted; a wider halo is "
                   "used until the measured error is below it (default 1e-3)")
    p.add_argument("--allow-small-halo", action="store_true", help="accept a halo below the receptive field")
    p.add_argument("--stitching", choices=list(STITCHINGS), default=CROP.name,
                   help="; ".join(f"{m.name}: {m.summary}" for m in STITCHINGS.values()))
    p.add_argument("--overlap", type=int_tuple, help="core overlap for --stitching blend")
    p.add_argument("--blend-window", choices=["linear", "gaussian"], default="linear")
    add_renamed(p, "--tiles-per-batch", "--batch-size", type=int,
                 help="tiles per forward pass (default: from the memory budget)")
    p.add_argument("--memory-budget", type=positive_float, metavar="MB",
                   help="megabytes the tiles of one batch may use, for the automatic core and tiles per batch "
                   "(default: an eighth of the RAM, at most 4096, on CPU; half the free GPU memory on CUDA)")
    p.add_argument("--no-tile-timing", dest="tile_timing", action="store_false",
                   help="choose the automatic core by the fewest computed voxels alone, without timing a few "
                   "candidate tiles once per model and device")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, or auto (CUDA, then MPS, then the CPU)")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision on CUDA")
    p.add_argument("--tta", action="store_true", help="average over flips of the spatial axes")
    p.add_argument("--channels-last", action="store_true",
                   help="batches in channels-last layout (channels_last_3d in 3D): cuDNN's NHWC kernels on a GPU")
    p.add_argument("--compile", action="store_true",
                   help="run torch.compile of the model (the first batch of each tile shape compiles)")
    p.add_argument("--normalization", choices=["percentile", "meanstd", "none", "per_tile"],
                   help="input intensities (default: the bioimage.io package's preprocessing, else percentile)")
    add_renamed(p, "--intensity-offset", "--offset", type=float,
                 help="given intensity offset (skips the statistics pass), with --intensity-scale")
    add_renamed(p, "--intensity-scale", "--scale", type=float, help="given intensity scale, with --intensity-offset")
    p.add_argument("--output-kind", choices=["float32", "float16", "uint16", "uint8", "mask"], default="float32",
                   help="stored values: probabilities as float32, float16 (error < 5e-4), uint16 (0-65535) or uint8 "
                        "(0-255: a quarter of float32's bytes, error at most 1/510), or a mask (an OME-Zarr label "
                        "image)")
    p.add_argument("--voxel-size", type=float_tuple, metavar="SIZE",
                   help="voxel size for the output's metadata when the input records none, e.g. 2,0.5,0.5")
    p.add_argument("--unit", help="space unit of --voxel-size (um, nm, micrometer, ...)")
    p.add_argument("--no-pyramid", dest="pyramid", action="store_false",
                   help="write level 0 only (default: a 2x multiscale pyramid down to 256 voxels per axis)")
    p.add_argument("--labels", action="store_true",
                   help="also write the mask (--threshold, argmax of several channels) as an OME-Zarr label image "
                        "labels/mask next to the probabilities (napari opens it as a Labels layer)")
    p.add_argument("--channel-names", type=name_list, metavar="NAMES",
                   help="names of the output channels in the OME metadata, e.g. background,membrane")
    p.add_argument("--ngff", choices=["0.5", "0.4"], default="0.5",
                   help="OME-NGFF version of a .zarr output: 0.5 (zarr v3, sharded; default) or 0.4 (zarr v2) for "
                        "older tools")
    p.add_argument("--no-sharding", dest="sharding", action="store_false",
                   help="one chunk per tile core (default: shards of one core holding viewer-sized chunks)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing seamfree output instead of resuming (never data seamfree did not write)")
    add_trust_code(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no informational lines (warnings and errors still show)")
    p.add_argument("--json", action="store_true",
                   help="print the run's report as JSON: geometry, tiles, seconds, Mvoxel/s, CPU, peak memory "
                        "against the budget, and the time of each stage (plan, read, forward, write, pyramid)")
    p.add_argument("--workers", type=int, help="run on a dask LocalCluster with this many worker processes")
    p.add_argument("--scheduler", help="run on the dask cluster of this scheduler address (tcp://host:8786)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--memory-limit", default="auto", help="LocalCluster memory per worker, e.g. 1GiB")
    p.add_argument("--tiles-per-task", type=int, default=4)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the scheduler")
    p.add_argument("--worker-timeout", type=float, default=120.0,
                   help="stop (and say so) when the scheduler has had no worker for this many seconds")
    p.add_argument("--tune-allocator", action="store_true",
                   help="spawn LocalCluster workers with seamfree's glibc settings: faster 3D tiles, but each worker "
                        "keeps its peak memory (give it more than --memory-limit 1GiB)")
    p.add_argument("--shard", metavar="I/N",
                   help="write only share I (from 0) of N of a .zarr output: the tasks of a job array each run one "
                        "(e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; auto reads SLURM, LSF, PBS, "
                        "SGE or Kubernetes' index); the last to finish completes the output (seamfree status OUT)")
    p.add_argument("--segment", choices=list(METHODS), metavar="METHOD",
                   help="then segment the prediction into instance labels next to it (labels/METHOD; see seamfree "
                        "segment)")
    add_cluster_options(p)
    add_model_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.models import load_model
    from seamfree.models.checkpoint import check_device
    from seamfree.tiling import IntensityNormalization, PredictConfig, PredictionReport, predict

    # before the model is loaded and described, which can take a minute: the device, the input, the core
    check_device(args.device)
    check_input_exists(args.image)
    if args.core is not None:
        PredictConfig(core=args.core)  # the same check as below, before the slow part
    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    if (args.intensity_offset is None) != (args.intensity_scale is None):
        given = "--intensity-offset" if args.intensity_offset is not None else "--intensity-scale"
        raise SeamfreeError(f"{given} was given alone; pass both --intensity-offset and --intensity-scale (the "
                            "statistics to normalize with), or neither to compute them from the image")
    if args.workers is not None and args.workers < 1:
        raise SeamfreeError(f"--workers must be at least 1, got {args.workers}; leave it out to predict in this "
                            "process")
    if args.intensity_offset is not None:
        normalization = IntensityNormalization(args.normalization or "percentile", offset=(args.intensity_offset,),
                                               scale=(args.intensity_scale,))
    else:
        normalization = normalization_option(args)
    config = PredictConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", stitching=args.stitching,
        overlap=args.overlap, blend_window=args.blend_window, tiles_per_batch=args.tiles_per_batch,
        device=args.device,
        amp=args.amp, tta=args.tta, channels_last=args.channels_last, compile=args.compile,
        normalization=normalization, output_kind=args.output_kind,
        threshold=args.threshold, pinned_core=args.core is not None and args.pin_core,
        allow_small_halo=args.allow_small_halo, overwrite=args.overwrite, activation=args.activation,
        voxel_size=args.voxel_size, unit=args.unit, pyramid=args.pyramid, max_error=args.max_error,
        memory_budget=int(args.memory_budget * 1e6) if args.memory_budget else None, tile_timing=args.tile_timing,
        labels=args.labels, channel_names=args.channel_names, ngff=args.ngff, sharding=args.sharding,
        **model_options(args),  # type: ignore[arg-type]
    )
    if args.segment is not None and Path(args.out).suffix.lower() not in ("", ".zarr"):
        raise SeamfreeError(f"--segment writes the labels next to an OME-Zarr prediction; the output {str(args.out)!r} "
                            "is not one: pass a .zarr output")
    shard = shard_of(args)
    if uses_cluster(args):
        from seamfree.distributed import predict_distributed

        cluster = cluster_of(args)
        summary = predict_distributed(args.model, args.image, args.out, config=config, cluster=cluster,
                                      axes=args.axes, progress=not args.quiet, trust_code=args.trust_code,
                                      key=key_of(args), channels=args.channels, gray=args.gray)
        print(f"wrote {args.out}: {summary.tiles_computed} of {summary.tiles_total} tiles in {summary.tasks} tasks on "
              f"{summary.workers} workers, {summary.seconds:.1f} s ({summary.voxels_per_second:.3g} voxels/s)")
        if summary.halo_check is not None:
            print(summary.halo_check.summary())
        return _segment_after(args)
    report: list[PredictionReport] = []
    image = input_of(args, model)
    try:
        with stop_on_signals() as stop:
            predict(model, image, args.out, config=config, axes=args.axes, progress=not args.quiet, report=report,
                    key=key_of(args), shard=shard, stop=stop.is_set)
    finally:
        if image is not args.image:
            image.close()
    done = report[0]
    if shard is not None:
        from seamfree.io.progress import output_status

        status = output_status(args.out)
        left = sum(s.get("state") != "done" for s in status["shards"])
        after = ("the output is complete" if status["complete"] else
                 f"{left} of {shard.count} shares left: the last task to finish completes the output")
        print(f"shard {shard} of {args.out}: {done.tiles_computed} of its {done.tiles_total} tiles computed in "
              f"{done.seconds:.1f} s; {after}")
        return 0
    if args.json:
        import json

        print(json.dumps({"output": str(args.out), **done.to_dict()}, indent=1, default=str))
        return _segment_after(args)
    frames = f" in {done.frames} frames" if done.frames is not None else ""
    print(f"wrote {args.out}: {done.tiles_computed} of {done.tiles_total} tiles{frames} computed in "
          f"{done.seconds:.1f} s (core {done.grid.core}, halo {done.grid.halo}, "
          f"{done.grid.compute_ratio:.2f}× voxels computed)")
    if done.stages is not None:
        print(done.summary())
    if done.halo_check is not None:
        print(done.halo_check.summary())
    return _segment_after(args)


def shard_of(args: argparse.Namespace) -> Any:
    """The share ``--shard`` names (None without it), refused with the options it cannot go with."""
    if args.shard is None:
        return None
    from seamfree.tiling.shards import parse_shard

    shard = parse_shard(args.shard)
    clash = [flag for flag, given in (("--workers", args.workers), ("--scheduler", args.scheduler),
                                      ("--cluster", args.cluster), ("--scheduler-file", args.scheduler_file),
                                      ("--segment", args.segment), ("--overwrite", args.overwrite)) if given]
    if clash:
        raise SeamfreeError(f"--shard {args.shard} runs one task of a job array and cannot go with {clash[0]}: "
                            "--workers/--scheduler split the work on dask instead; segment the complete output "
                            "afterwards (seamfree submit segment chains it); remove an old output before the tasks "
                            "start instead of --overwrite")
    return shard


def _segment_after(args: argparse.Namespace) -> int:
    """``predict --segment METHOD``: the labels of the finished prediction, next to it."""
    if args.segment is None:
        return 0
    return run_segment(args, Path(args.out), None, {"method": args.segment})
