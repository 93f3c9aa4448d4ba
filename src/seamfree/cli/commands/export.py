"""``seamfree export MODEL --bioimageio OUT.zip``: a bioimage.io package with the measured halo and stride."""

from __future__ import annotations

import argparse
from pathlib import Path

from seamfree.cli.options import add_model_options, add_trust_code
from seamfree.errors import SeamfreeError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the command's subparsers."""
    export = subparsers.add_parser("export", help="write a model as a bioimage.io package (measured halo and stride)")
    export.add_argument("model", type=Path)
    export.add_argument("--bioimageio", type=Path, required=True, metavar="OUT.zip", help="package to write")
    export.add_argument("--name", help="model name in the package (default: the file name)")
    add_trust_code(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing package")
    add_model_options(export, activation=False)
    export.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.models import describe_model, load_model
    from seamfree.models.bioimageio import export_bioimageio

    if args.bioimageio.exists() and not args.overwrite:
        raise SeamfreeError(f"{str(args.bioimageio)!r} exists; pass --overwrite to replace it, or another path")
    model = load_model(args.model, trust_code=args.trust_code)
    info = describe_model(model, spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                          output=args.model_output)
    path = export_bioimageio(model, args.bioimageio, name=args.name or f"{Path(args.model).stem} (seamfree)")
    print(f"wrote {path} (halo {info.receptive_field.halo}, step {info.network_stride}, {info.verdict})")
    return 0
