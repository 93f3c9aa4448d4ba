"""``seamfree fix MODEL IMAGES... --out FIXED``: a model made seamless with unlabeled images. Parser and run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seamfree.cli.options import add_trust_code, int_tuple
from seamfree.errors import ConfigError, DataError, OutputExistsError

__all__ = ["EXIT_NOT_REACHED", "add_parser", "run"]

# --require-agreement and the fixed model agrees less than asked: the model is still written
EXIT_NOT_REACHED = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fix`` to the command's subparsers."""
    f = subparsers.add_parser(
        "fix", help="make a model seamless with your unlabeled images: BatchNorm converted and recalibrated, "
                    "per-tile norms replaced by BatchRenorm and trained to match the original")
    f.add_argument("model", type=Path, help="the model to fix (seamfree checkpoint, or a pickled module with "
                                           "--trust-code)")
    f.add_argument("images", nargs="+", help="unlabeled images of the kind the model is used on (.tif, .npy, .zarr, "
                                              ".h5 with --key); with two or more the last is held out to measure "
                                              "the agreement")
    f.add_argument("-o", "--out", type=Path, required=True, help="path of the fixed model")
    f.add_argument("--to", choices=["batchrenorm", "batch"], default="batchrenorm",
                   help="what per-tile norms become (batchrenorm: later training with small batches stays safe)")
    f.add_argument("--bioimageio", type=Path, metavar="OUT.zip",
                   help="also write the fixed model as a bioimage.io package (its measured halo and stride)")
    f.add_argument("--iterations", type=int, default=600, help="training steps of the self-distillation (600)")
    f.add_argument("--patch-size", type=int_tuple, help="training patch (default: the model's, at least 128 in 2D)")
    f.add_argument("--batch-size", type=int, default=8, help="patches per step (8)")
    f.add_argument("--agreement", type=float, default=0.97,
                   help="the Dice of masks to the original the fix aims at on held-out data (0.97)")
    f.add_argument("--require-agreement", action="store_true",
                   help=f"exit with status {EXIT_NOT_REACHED} when the agreement is not reached (the best model is "
                        "written anyway)")
    f.add_argument("--gt", help="a mask of the held-out image: the accuracy before and after is reported")
    f.add_argument("--report", type=Path, help="folder for the before/after report (fix.html, fix.json)")
    f.add_argument("--device", default="cpu")
    f.add_argument("--seed", type=int, default=0)
    add_trust_code(f)
    f.add_argument("--overwrite", action="store_true",
                   help="replace an existing file at --out and the report's own files (never anything else)")
    f.add_argument("-q", "--quiet", action="store_true")
    f.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from seamfree.fix import FixConfig, fix_model
    from seamfree.fix.report import REPORT_FILES, write_fix_report
    from seamfree.models import load_model, model_metadata, save_model

    if args.out.exists() and not args.overwrite:
        raise OutputExistsError(f"{str(args.out)!r} exists; pass --overwrite to replace it, or choose another --out")
    if args.report is not None and not args.overwrite:
        taken = [name for name in REPORT_FILES if (args.report / name).exists()]
        if taken:
            raise OutputExistsError(f"{str(args.report)!r} already holds {', '.join(taken)}; pass --overwrite to "
                                    "replace them, or choose another --report folder")
    if args.bioimageio is not None and args.bioimageio.exists() and not args.overwrite:
        raise OutputExistsError(f"{str(args.bioimageio)!r} exists; pass --overwrite to replace it, or another path")
    images = _images(args.images)
    config = FixConfig(iterations=args.iterations, patch_size=args.patch_size, batch_size=args.batch_size,
                       agreement=args.agreement, seed=args.seed, device=args.device, to=args.to)
    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    ground_truth = None if args.gt is None else _mask(args.gt)
    result = fix_model(model, images, config=config, ground_truth=ground_truth)
    if result.method == "none":
        print(f"{args.model}: {result.summary}; nothing written")
        return 0
    metadata = {**model_metadata(model), "fixed_from": str(args.model), "fix": result.to_dict()}
    metadata["fix"].pop("history", None)
    if getattr(result.model, "architecture", None) is not None:
        path = save_model(result.model, args.out, metadata=metadata)
    elif args.trust_code:  # a pickled module stays a pickled module
        torch.save(result.model, args.out)
        path = args.out
    else:
        raise ConfigError(f"the fixed model of {str(args.model)!r} is not a seamfree model and cannot be saved as "
                          "one; load a pickled module with --trust-code to write it the same way")
    if args.bioimageio is not None:
        from seamfree.models.bioimageio import export_bioimageio

        export_bioimageio(result.model, args.bioimageio, name=f"{Path(args.model).stem} (fixed by seamfree)")
        print(f"wrote {args.bioimageio}")
    if args.report is not None:
        write_fix_report(result, args.report, model=str(args.model), fixed=str(path), overwrite=args.overwrite)
    print(f"wrote {path}: {result.summary}")
    if args.require_agreement and not result.reached:
        print(f"seamfree fix: the agreement {result.agreement.dice if result.agreement else float('nan'):.3f} is "
              f"below --agreement {args.agreement}; the best model was written", flush=True)
        return EXIT_NOT_REACHED
    return 0


_IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".zarr", ".h5", ".hdf5")


def _images(given: list[str]) -> list[str]:
    """The image paths: files as given, folders expanded to the images inside them (sorted)."""
    images: list[str] = []
    for item in given:
        path = Path(item)
        if "://" in item or (path.exists() and (not path.is_dir() or path.suffix == ".zarr")):
            images.append(item)
        elif path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {item!r} holds no image ({', '.join(_IMAGE_SUFFIXES)}); give image files")
            images.extend(found)
        else:
            raise DataError(f"image {item!r} does not exist; check the path (relative paths start from "
                            f"{str(Path.cwd())!r})")
    return images


def _mask(path: str) -> Any:
    from seamfree.io.readers import open_image

    source = open_image(path)
    try:
        return source.read_all()[0]
    finally:
        source.close()
