"""``seamfree convert MODEL --out NEW``: BatchNorm layers converted to BatchRenorm (exact)."""

from __future__ import annotations

import argparse
from pathlib import Path

from seamfree.cli.commands.common import new_model_file
from seamfree.cli.options import add_trust_code

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` to the command's subparsers."""
    convert = subparsers.add_parser("convert", help="convert a model's BatchNorm layers to BatchRenorm (exact)")
    convert.add_argument("model", type=Path)
    convert.add_argument("--to", default="batchrenorm", choices=["batchrenorm", "batch"])
    convert.add_argument("--from", dest="from_", default="batch", choices=["batch", "batchrenorm"])
    convert.add_argument("--out", type=Path, required=True, help="path of the converted checkpoint")
    add_trust_code(convert)
    convert.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    convert.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.layers import convert_norm
    from seamfree.models import load_model, model_metadata, save_model

    new_model_file(args)
    model = load_model(args.model, trust_code=args.trust_code)
    converted = convert_norm(model, args.to, from_=args.from_)
    metadata = {**model_metadata(model), "converted_from": str(args.model), "converted_norm": args.from_}
    path = save_model(converted, args.out, metadata=metadata)
    print(f"wrote {path}")
    return 0
