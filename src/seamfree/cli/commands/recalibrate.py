"""``seamfree recalibrate MODEL IMAGES --out NEW``: re-estimate a model's running statistics on images."""

from __future__ import annotations

import argparse
from pathlib import Path

from seamfree.cli.commands.common import new_model_file
from seamfree.cli.options import add_model_options, add_trust_code, int_tuple

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``recalibrate`` to the command's subparsers."""
    r = subparsers.add_parser("recalibrate", help="re-estimate a model's running statistics on your images")
    r.add_argument("model", type=Path)
    r.add_argument("images", nargs="+", help="images of the target domain")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--patch-size", type=int_tuple, help="default: the training patch size from the checkpoint")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--batches", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    add_trust_code(r)
    r.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    add_model_options(r, activation=False)
    r.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.models import load_model, model_metadata, save_model
    from seamfree.training.recalibrate import recalibrate_on_images

    new_model_file(args)
    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    metadata = model_metadata(model)
    patch = args.patch_size or metadata.get("patch_size") or 128
    recalibrate_on_images(model, args.images, patch_size=patch, batch_size=args.batch_size, batches=args.batches,
                          seed=args.seed, device=args.device, spatial_dims=args.spatial_dims,
                          in_channels=args.in_channels, output=args.model_output)
    path = save_model(model, args.out, metadata={**metadata, "recalibrated_on": [str(i) for i in args.images]})
    print(f"wrote {path}")
    return 0
