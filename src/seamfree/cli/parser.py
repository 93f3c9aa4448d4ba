"""The ``seamfree`` argument parser: commands, options, their help, and deprecated option names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from seamfree._version import __version__
from seamfree.cli import commands, fix, seams
from seamfree.cli.options import add_trust_code
from seamfree.tiling.stitching import CROP, STITCHINGS

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (what was wrong and where the help is), exit status 2; the
    usage block argparse prints by default is in ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Renamed(argparse.Action):
    """A deprecated option name: warns on stderr and stores into the new option's destination."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"seamfree: {option_string} is deprecated and will be removed; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_renamed(parser: argparse.ArgumentParser, new: str, old: str, **kwargs: Any) -> None:
    """Add option ``new``, and its former name ``old`` (hidden from the help) with the same destination."""
    action = parser.add_argument(new, **kwargs)
    parser.add_argument(old, dest=action.dest, action=_Renamed, new=new, type=kwargs.get("type", str),
                        help=argparse.SUPPRESS)


def _int_tuple(text: str) -> int | tuple[int, ...]:
    """Parse ``"256"`` (every axis) into an int, ``"32,256,256"`` into a tuple of ints."""
    try:
        values = tuple(int(part) for part in text.split(","))
        return values[0] if len(values) == 1 else values
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from exc


def _halo(text: str) -> int | tuple[int, ...] | str:
    """Parse ``--halo``: voxels per side (``"32"``, ``"8,32,32"``) or the near-exact ``effective[:TOL]``."""
    if text == "effective" or text.startswith("effective:"):  # checked here without importing torch
        try:
            tolerance = float(text.partition(":")[2] or "1e-3")
        except ValueError:
            tolerance = -1.0
        if not 0.0 < tolerance < 1.0:
            raise argparse.ArgumentTypeError(f"expected effective or effective:TOL with 0 < TOL < 1 (a relative "
                                             f"gradient threshold such as 1e-3), got {text!r}")
        return text
    try:
        return _int_tuple(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected voxels per side (32 or 8,32,32) or effective[:TOL] (the "
                                         f"near-exact mode, e.g. effective:1e-3), got {text!r}") from exc


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number such as 1e-3, got {text!r}")
    return value


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = (-1,)
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected channel numbers such as 0 or 0,2, got {text!r}")
    return values


def _series(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a series number 0, 1, 2, ..., got {text!r}")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names such as background,membrane, got {text!r}")
    return names


def _float_tuple(text: str) -> float | tuple[float, ...]:
    """Parse ``"0.5"`` (every axis) or ``"2,0.5,0.5"`` (z, y, x)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from exc
    return values[0] if len(values) == 1 else values


def _output_key(text: str) -> int | str:
    """An output index (``"1"``) or dict key (``"flows"``)."""
    return int(text) if text.isdigit() else text


def _add_model_options(parser: argparse.ArgumentParser, activation: bool = True) -> None:
    """The options that describe a foreign model where its weights do not tell (see ``describe_model``)."""
    group = parser.add_argument_group("model", "for models whose first convolution or output does not say it")
    group.add_argument("--spatial-dims", type=int, choices=[1, 2, 3], help="2 or 3 (default: from the model)")
    group.add_argument("--in-channels", type=int, help="input channels (default: from the first convolution)")
    group.add_argument("--output", type=_output_key, metavar="INDEX|KEY", dest="model_output",
                       help="which output of a model returning a tuple or dict is the segmentation")
    if activation:
        group.add_argument("--activation", choices=["auto", "none", "sigmoid", "softmax"], default="auto",
                           help="applied to the output (auto: sigmoid/softmax for seamfree models and packages "
                                "that declare it, none otherwise)")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    """What to read of the input: --key, --series, --channels, --gray (predict and diagnose)."""
    parser.add_argument("--key", help="dataset inside an HDF5 file, or array inside a zarr group")
    parser.add_argument("--series", type=_series, metavar="N",
                        help="series of a bioformats2raw OME-Zarr (a converted vendor file; default 0)")
    parser.add_argument("--channels", type=_channels, metavar="LIST",
                        help="input channels to read, in this order, e.g. 0 or 0,2 (default: all)")
    parser.add_argument("--gray", action="store_true",
                        help="read the (selected) input channels as one gray channel, their mean (RGB for a "
                             "one-channel model)")


def _add_diagnose(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("diagnose", help="will tiling hurt this model on this image? TM, TED, seams, report")
    p.add_argument("model", type=Path)
    p.add_argument("image", help="image (.zarr, .tif, .h5 with --key, .npy)")
    p.add_argument("--gt", help="ground-truth mask of the image (adds Dice and ΔDice)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html, report.json, figures/)")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, YXC")
    _add_input_options(p)
    p.add_argument("--core", type=_int_tuple, help="core of the diagnosis grid (default: predict's, ≤ half the image)")
    p.add_argument("--halo", type=_int_tuple, help="halo (default: measured receptive field)")
    _add_renamed(p, "--grid-offset", "--offset", type=_int_tuple,
                 help="shift of the second grid's seams (default: half a core)")
    p.add_argument("--patch-size", type=_int_tuple,
                   help="the model's training patch, for TED batches (default: from the checkpoint)")
    p.add_argument("--batch-size", type=int,
                   help="the model's training batch size, for TED batches (default: from the checkpoint, else 2)")
    p.add_argument("--ted-batches", type=int, default=None,
                   help="TED batches (default: enough for 32 patches, at least 8: 32 for a batch-1 model)")
    p.add_argument("--ted-sampling", choices=["training", "uniform"], default="training",
                   help="with --gt: TED patches centred on foreground like the model's training patches "
                   "(default), or anywhere")
    p.add_argument("--normalization", choices=["percentile", "meanstd", "none", "per_tile"],
                   help="input intensities (default: the bioimage.io package's preprocessing, else percentile)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="model name in the report (default: the file name)")
    add_trust_code(p)
    _add_model_options(p)
    p.set_defaults(handler=commands.diagnose)


def _add_training(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser("train", help="train a 2D/3D U-Net (or small ViT) with any normalization")
    t.add_argument("config", type=Path, nargs="?", help="YAML configuration (see examples/train.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.batch_size=2")
    t.add_argument("--out", help="output folder (overrides output)")
    t.add_argument("--iterations", type=int)
    t.add_argument("--norm", help="normalization (overrides model.norm)")
    t.add_argument("--device")
    t.add_argument("--resume", action="store_true", help="continue from the output folder's state.pt")
    t.add_argument("--overwrite", action="store_true",
                   help="train into a non-empty output folder, replacing its checkpoints and logs")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(handler=commands.train)

    r = subparsers.add_parser("recalibrate", help="re-estimate a model's running statistics on your images")
    r.add_argument("model", type=Path)
    r.add_argument("images", nargs="+", help="images of the target domain")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--patch-size", type=_int_tuple, help="default: the training patch size from the checkpoint")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--batches", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    add_trust_code(r)
    r.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    _add_model_options(r, activation=False)
    r.set_defaults(handler=commands.recalibrate)

    d = subparsers.add_parser("demo", help="train InstanceNorm and BatchRenorm U-Nets on synthetic data and show "
                            "their seams side by side (a few minutes on a CPU, no download)")
    d.add_argument("--out", type=Path, default=Path("seamfree-demo"))
    d.add_argument("--iterations", type=int, default=300)
    d.add_argument("--image-size", type=int, default=1024)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(handler=commands.demo)


def _add_study(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("study", help="reproduce the paper's trade-off on real data: norms x batch sizes x "
                            "datasets, ViT, 3D, transfer; a CSV and a results page")
    s.add_argument("config", type=Path, nargs="?", help="YAML changing the profile (see examples/study.yaml)")
    s.add_argument("--profile", default="quick", help="quick (minutes), standard (the grid ~1.5 h per seed on "
                   "2 CPU cores, the transfer ~10 h: run it in pieces with --only) or full (paper-scale; use a GPU)")
    s.add_argument("--out", type=Path, default=Path("seamfree-study"), help="output folder; rerun to resume")
    s.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only runs whose name matches (and the runs they start from), e.g. 'grid/isbi2012/*'")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. grid.batch_sizes=[1,8]")
    s.add_argument("--results", type=Path, help="results page to write (default: OUT/results.md)")
    s.add_argument("--list", action="store_true", help="list the runs and which are done; run nothing")
    s.add_argument("--report-only", action="store_true",
                   help="write the table and the results page from the runs already done; run nothing")
    s.add_argument("--device", help="cpu or cuda")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.set_defaults(handler=commands.study)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="seamless tiled prediction of a 2D/3D image of any size")
    p.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    p.add_argument("image", help="input: .zarr/OME-Zarr, .tif, .h5 (with --key) or .npy")
    p.add_argument("out", type=Path, help="output: .zarr (OME-Zarr) or .tif; rerun to resume")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, CYX, YXC (default: channel-first); a "
                   "leading T (TYX, TCZYX) predicts a time series frame by frame into a T axis of the output")
    _add_input_options(p)
    p.add_argument("--core", type=_int_tuple, help="core shape, e.g. 512 or 32,256,256 (default: from memory)")
    p.add_argument("--pin-core", action="store_true", help="error if --core is not a multiple of the stride")
    p.add_argument("--halo", type=_halo, help="halo per side (default: the exact halo of the measured receptive "
                   "field); effective[:TOL]: the near-exact mode, the effective receptive field at gradient "
                   "tolerance TOL (default 1e-3), its error against the exact halo measured first")
    p.add_argument("--max-error", type=_positive_float, default=1e-3,
                   help="near-exact mode: the largest max |Δ| against exact prediction accepted; a wider halo is "
                   "used until the measured error is below it (default 1e-3)")
    p.add_argument("--allow-small-halo", action="store_true", help="accept a halo below the receptive field")
    p.add_argument("--stitching", choices=list(STITCHINGS), default=CROP.name,
                   help="; ".join(f"{m.name}: {m.summary}" for m in STITCHINGS.values()))
    p.add_argument("--overlap", type=_int_tuple, help="core overlap for --stitching blend")
    p.add_argument("--blend-window", choices=["linear", "gaussian"], default="linear")
    _add_renamed(p, "--tiles-per-batch", "--batch-size", type=int,
                 help="tiles per forward pass (default: from the memory budget)")
    p.add_argument("--memory-budget", type=_positive_float, metavar="MB",
                   help="megabytes the tiles of one batch may use, for the automatic core and tiles per batch "
                   "(default: an eighth of the RAM, at most 4096, on CPU; half the free GPU memory on CUDA)")
    p.add_argument("--no-tile-timing", dest="tile_timing", action="store_false",
                   help="choose the automatic core by the fewest computed voxels alone, without timing a few "
                   "candidate tiles once per model and device")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision on CUDA")
    p.add_argument("--tta", action="store_true", help="average over flips of the spatial axes")
    p.add_argument("--channels-last", action="store_true",
                   help="batches in channels-last layout (channels_last_3d in 3D): cuDNN's NHWC kernels on a GPU")
    p.add_argument("--compile", action="store_true",
                   help="run torch.compile of the model (the first batch of each tile shape compiles)")
    p.add_argument("--normalization", choices=["percentile", "meanstd", "none", "per_tile"],
                   help="input intensities (default: the bioimage.io package's preprocessing, else percentile)")
    _add_renamed(p, "--intensity-offset", "--offset", type=float,
                 help="given intensity offset (skips the statistics pass), with --intensity-scale")
    _add_renamed(p, "--intensity-scale", "--scale", type=float, help="given intensity scale, with --intensity-offset")
    p.add_argument("--output-kind", choices=["float32", "uint8", "mask"], default="float32")
    p.add_argument("--voxel-size", type=_float_tuple, metavar="SIZE",
                   help="voxel size for the output's metadata when the input records none, e.g. 2,0.5,0.5")
    p.add_argument("--unit", help="space unit of --voxel-size (um, nm, micrometer, ...)")
    p.add_argument("--no-pyramid", dest="pyramid", action="store_false",
                   help="write level 0 only (default: a 2x multiscale pyramid down to 256 voxels per axis)")
    p.add_argument("--labels", action="store_true",
                   help="also write the mask (--threshold, argmax of several channels) as an OME-Zarr label image "
                        "labels/mask next to the probabilities (napari opens it as a Labels layer)")
    p.add_argument("--channel-names", type=_names, metavar="NAMES",
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
    p.add_argument("--segment", choices=["components", "watershed", "distance"], metavar="METHOD",
                   help="then segment the prediction into instance labels next to it (labels/METHOD; see seamfree "
                        "segment)")
    _add_model_options(p)
    p.set_defaults(handler=commands.predict)


def _add_segment(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("segment", help="instance labels of a prediction of any size, blockwise and equal to "
                              "the whole-image result (components, watershed, distance)")
    s.add_argument("prediction", help="a prediction (OME-Zarr from seamfree predict, or .zarr/.tif/.h5/.npy)")
    s.add_argument("out", type=Path, nargs="?",
                   help="OME-Zarr label image to write (default: next to an OME-Zarr prediction, PRED/labels/METHOD)")
    s.add_argument("--method", choices=["components", "watershed", "distance"], default="components",
                   help="components: connected components of foreground > threshold; watershed: seeds "
                        "foreground - boundary > seed threshold flood the boundary map within the mask (a "
                        "one-channel prediction is a boundary map); distance: distance-transform watershed of the "
                        "foreground")
    s.add_argument("--foreground-channel", type=int, help="channel of the foreground probability")
    s.add_argument("--boundary-channel", type=int, help="channel of the boundary probability (watershed)")
    s.add_argument("--threshold", type=float, help="foreground threshold of the mask (default 0.5)")
    s.add_argument("--seed-threshold", type=float, help="watershed seeds: foreground - boundary above this (0.5)")
    s.add_argument("--min-size", type=int, help="components: remove objects smaller than this many voxels")
    s.add_argument("--min-distance", type=int, help="distance: seeds are maxima within this many voxels (3)")
    s.add_argument("--min-radius", type=float, help="distance: seeds at least this deep inside the mask (1)")
    s.add_argument("--connectivity", type=int, help="1 (faces, default) up to the number of axes (corners)")
    s.add_argument("--block", type=_int_tuple, help="block and output chunk shape (default 2048 in 2D, 128 in 3D)")
    s.add_argument("--halo", type=_int_tuple,
                   help="context per block for watershed/distance (default: the largest object's extent)")
    s.add_argument("--max-halo", type=_int_tuple, help="cap of the automatic halo (default: half the block)")
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
    s.set_defaults(handler=commands.segment)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``seamfree`` command."""
    parser = _Parser(
        prog="seamfree", description="Segmentation of very large images, free of tiling artifacts."
    )
    parser.add_argument("--version", action="version", version=f"seamfree {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    audit = subparsers.add_parser("audit", help="list the normalization layers of a model and whether they make "
                                "predictions depend on the tile")
    audit.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_code(audit)
    audit.add_argument("--static", action="store_true",
                       help="only the static audit of the layers (no receptive field, no tile probe)")
    _add_model_options(audit, activation=False)
    audit.set_defaults(handler=commands.audit)

    convert = subparsers.add_parser("convert", help="convert a model's BatchNorm layers to BatchRenorm (exact)")
    convert.add_argument("model", type=Path)
    convert.add_argument("--to", default="batchrenorm", choices=["batchrenorm", "batch"])
    convert.add_argument("--from", dest="from_", default="batch", choices=["batch", "batchrenorm"])
    convert.add_argument("--out", type=Path, required=True, help="path of the converted checkpoint")
    add_trust_code(convert)
    convert.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    convert.set_defaults(handler=commands.convert)

    export = subparsers.add_parser("export", help="write a model as a bioimage.io package (measured halo and stride)")
    export.add_argument("model", type=Path)
    export.add_argument("--bioimageio", type=Path, required=True, metavar="OUT.zip", help="package to write")
    export.add_argument("--name", help="model name in the package (default: the file name)")
    add_trust_code(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing package")
    _add_model_options(export, activation=False)
    export.set_defaults(handler=commands.export)

    _add_predict(subparsers)
    _add_segment(subparsers)
    seams.add_parser(subparsers, _int_tuple)
    fix.add_parser(subparsers, _int_tuple)
    _add_diagnose(subparsers)
    _add_training(subparsers)
    _add_study(subparsers)
    data = subparsers.add_parser("data", help="public datasets: list, info (source, licence, citation), fetch")
    data.add_argument("action", choices=["list", "info", "fetch"])
    data.add_argument("name", nargs="?", help="dataset name (see `seamfree data list`)")
    data.add_argument("-q", "--quiet", action="store_true")
    data.set_defaults(handler=commands.data)

    return parser
