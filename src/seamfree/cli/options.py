"""Options and option types several commands share, spelled once (torch-free: the parser imports them)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from seamfree._version import REMOVED_IN

__all__ = [
    "RenamedOption",
    "add_cluster_options",
    "add_input_options",
    "add_model_options",
    "add_renamed",
    "add_trust_code",
    "channel_list",
    "float_tuple",
    "halo_value",
    "int_tuple",
    "name_list",
    "output_key",
    "positive_float",
    "series_index",
    "uses_cluster",
]

TRUST_HELP = ("consent to run code that travels with the model: a pickled nn.Module or torch.export program, a "
              "bioimage.io architecture outside seamfree's list of network classes, TorchScript whose code reaches "
              "files or the system (--allow-pickle is the older name)")


def add_trust_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-code`` (older name ``--allow-pickle``): the one consent flag for code from a model file."""
    parser.add_argument("--trust-code", "--allow-pickle", dest="trust_code", action="store_true", help=TRUST_HELP)


class RenamedOption(argparse.Action):
    """A deprecated option name: warns on stderr and stores into the new option's destination."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"seamfree: {option_string} is deprecated and will be removed in seamfree {REMOVED_IN}; use "
              f"{self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(parser: argparse.ArgumentParser, new: str, old: str, **kwargs: Any) -> None:
    """Add option ``new``, and its former name ``old`` (hidden from the help) with the same destination."""
    action = parser.add_argument(new, **kwargs)
    parser.add_argument(old, dest=action.dest, action=RenamedOption, new=new, type=kwargs.get("type", str),
                        help=argparse.SUPPRESS)


def int_tuple(text: str) -> int | tuple[int, ...]:
    """Parse ``"256"`` (every axis) into an int, ``"32,256,256"`` into a tuple of ints."""
    try:
        values = tuple(int(part) for part in text.split(","))
        return values[0] if len(values) == 1 else values
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from exc


def halo_value(text: str) -> int | tuple[int, ...] | str:
    """Parse ``--halo``: voxels per side (``"32"``, ``"8,32,32"``), ``auto`` or the near-exact ``effective[:TOL]``
    (:func:`seamfree.tiling.specs.parse_halo`, which the library uses too; torch-free)."""
    from seamfree.errors import ConfigError
    from seamfree.tiling.specs import parse_halo

    try:
        return parse_halo(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number such as 1e-3, got {text!r}")
    return value


def channel_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = (-1,)
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected channel numbers such as 0 or 0,2, got {text!r}")
    return values


def series_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a series number 0, 1, 2, ..., got {text!r}")
    return value


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names such as background,membrane, got {text!r}")
    return names


def float_tuple(text: str) -> float | tuple[float, ...]:
    """Parse ``"0.5"`` (every axis) or ``"2,0.5,0.5"`` (z, y, x)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from exc
    return values[0] if len(values) == 1 else values


def output_key(text: str) -> int | str:
    """An output index (``"1"``) or dict key (``"flows"``)."""
    return int(text) if text.isdigit() else text


def add_model_options(parser: argparse.ArgumentParser, activation: bool = True) -> None:
    """The options that describe a foreign model where its weights do not tell (see ``describe_model``)."""
    group = parser.add_argument_group("model", "for models whose first convolution or output does not say it")
    group.add_argument("--spatial-dims", type=int, choices=[1, 2, 3], help="2 or 3 (default: from the model)")
    group.add_argument("--in-channels", type=int, help="input channels (default: from the first convolution)")
    group.add_argument("--output", type=output_key, metavar="INDEX|KEY", dest="model_output",
                       help="which output of a model returning a tuple or dict is the segmentation")
    if activation:
        group.add_argument("--activation", choices=["auto", "none", "sigmoid", "softmax"], default="auto",
                           help="applied to the output (auto: sigmoid/softmax for seamfree models and packages "
                                "that declare it, none otherwise)")


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """What to read of the input: --key, --series, --channels, --gray (predict and diagnose)."""
    parser.add_argument("--key", help="dataset inside an HDF5 file, or array inside a zarr group")
    parser.add_argument("--series", type=series_index, metavar="N",
                        help="series of a bioformats2raw OME-Zarr (a converted vendor file; default 0)")
    parser.add_argument("--channels", type=channel_list, metavar="LIST",
                        help="input channels to read, in this order, e.g. 0 or 0,2 (default: all)")
    parser.add_argument("--gray", action="store_true",
                        help="read the (selected) input channels as one gray channel, their mean (RGB for a "
                             "one-channel model)")


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where dask runs beyond a LocalCluster: batch jobs through dask-jobqueue, or a scheduler file."""
    parser.add_argument("--cluster", choices=["slurm", "lsf", "pbs", "sge"],
                        help="start the dask workers as batch jobs (dask-jobqueue; pip install 'seamfree[hpc]'): "
                             "--jobs of --workers processes each")
    parser.add_argument("--jobs", type=int, default=1, help="--cluster: number of batch jobs (default 1)")
    parser.add_argument("--job-memory", default="4GB", help="--cluster: memory of each job (default 4GB)")
    parser.add_argument("--walltime", help="--cluster: walltime of each job, e.g. 02:00:00")
    parser.add_argument("--queue", help="--cluster: partition (SLURM) or queue")
    parser.add_argument("--project", dest="account", help="--cluster: account to charge")
    parser.add_argument("--interface", help="--cluster: network interface of the workers and scheduler, e.g. ib0")
    parser.add_argument("--scheduler-file", help="use the dask scheduler described by this file (dask-mpi, "
                                                 "SLURMRunner, dask scheduler --scheduler-file)")


def uses_cluster(args: argparse.Namespace) -> bool:
    """Whether the command's options send the work to dask."""
    return bool(args.workers or args.scheduler or args.cluster or args.scheduler_file)
