"""``seamfree segment PRED [OUT]``: instance labels of a prediction of any size, equal to the whole-image result."""

from __future__ import annotations

import argparse
from pathlib import Path

from seamfree.cli.commands.common import run_segment
from seamfree.cli.options import add_cluster_options, int_tuple
from seamfree.segment.methods import METHOD_KINDS, METHODS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segment`` to the command's subparsers."""
    s = subparsers.add_parser("segment", help="instance labels of a prediction of any size, blockwise and equal to "
                              "the whole-image result (components, watershed, distance)")
    s.add_argument("prediction", help="a prediction (OME-Zarr from seamfree predict, or .zarr/.tif/.h5/.npy)")
    s.add_argument("out", type=Path, nargs="?",
                   help="OME-Zarr label image to write (default: next to an OME-Zarr prediction, PRED/labels/METHOD)")
    s.add_argument("--method", choices=list(METHODS), default=METHODS[0],
                   help="; ".join(f"{kind.name}: {kind.summary}" for kind in METHOD_KINDS.values()))
    s.add_argument("--foreground-channel", type=int, help="channel of the foreground probability")
    s.add_argument("--boundary-channel", type=int, help="channel of the boundary probability (watershed)")
    s.add_argument("--threshold", type=float, help="foreground threshold of the mask (default 0.5)")
    s.add_argument("--seed-threshold", type=float, help="watershed seeds: foreground - boundary above this (0.5)")
    s.add_argument("--min-size", type=int, help="components: remove objects smaller than this many voxels")
    s.add_argument("--min-distance", type=int, help="distance: seeds are maxima within this many voxels (3)")
    s.add_argument("--min-radius", type=float, help="distance: seeds at least this deep inside the mask (1)")
    s.add_argument("--connectivity", type=int, help="1 (faces, default) up to the number of axes (corners)")
    s.add_argument("--block", type=int_tuple, help="block and output chunk shape (default 2048 in 2D, 128 in 3D)")
    s.add_argument("--halo", type=int_tuple,
                   help="context per block for watershed/distance (default: the largest object's extent)")
    s.add_argument("--max-halo", type=int_tuple, help="cap of the automatic halo (default: half the block)")
    s.add_argument("--name", help="name of the label image next to the prediction (default: the method)")
    s.add_argument("--key", help="array inside a zarr group or dataset of an HDF5 file")
    s.add_argument("--spatial-dims", type=int, choices=[2, 3],
                   help="2 or 3: how many axes of a prediction without axis metadata are spatial")
    s.add_argument("--axes", help="axis order of a prediction without axis metadata, e.g. CYX or ZYX")
    s.add_argument("--no-pyramid", dest="pyramid", action="store_false", default=None,
                   help="write level 0 only (default: a pyramid, every second voxel)")
    s.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an earlier segmentation seamfree wrote (never data seamfree did not write)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--workers", type=int, help="run the block tasks on a dask LocalCluster of this many workers")
    s.add_argument("--scheduler", help="run the block tasks on the dask cluster of this scheduler (tcp://host:8786)")
    s.add_argument("--threads-per-worker", type=int, default=1)
    s.add_argument("--memory-limit", default="auto", help="LocalCluster memory per worker, e.g. 1GiB")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the scheduler")
    s.add_argument("--worker-timeout", type=float, default=120.0,
                   help="stop (and say so) when the scheduler has had no worker for this many seconds")
    s.add_argument("--shard", metavar="I/N",
                   help="label only share I (from 0) of N of the blocks' first pass: the tasks of a job array each run "
                        "one (auto reads the scheduler's index); the one that finishes the last share joins the "
                        "objects and writes the labels (seamfree submit segment ... --tasks N)")
    add_cluster_options(s)
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in (
        "method", "foreground_channel", "boundary_channel", "threshold", "seed_threshold", "min_size",
        "min_distance", "min_radius", "connectivity", "block", "halo", "max_halo", "name", "key", "pyramid",
        "overwrite", "spatial_dims", "axes") if getattr(args, name, None) is not None}
    return run_segment(args, args.prediction, args.out, options)
