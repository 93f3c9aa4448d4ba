"""``seamfree diagnose MODEL IMAGE --out DIR``: will tiling hurt this model on this image? The report."""

from __future__ import annotations

import argparse
from pathlib import Path

from seamfree.cli.commands.common import input_of, key_of, model_options, normalization_option
from seamfree.cli.options import add_input_options, add_model_options, add_renamed, add_trust_code, int_tuple

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``diagnose`` to the command's subparsers."""
    p = subparsers.add_parser("diagnose", help="will tiling hurt this model on this image? TM, TED, seams, report")
    p.add_argument("model", type=Path)
    p.add_argument("image", help="image (.zarr, .tif, .h5 with --key, .npy)")
    p.add_argument("--gt", help="ground-truth mask of the image (adds Dice and ΔDice)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html, report.json, figures/)")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, YXC")
    add_input_options(p)
    p.add_argument("--core", type=int_tuple, help="core of the diagnosis grid (default: predict's, ≤ half the image)")
    p.add_argument("--halo", type=int_tuple, help="halo (default: measured receptive field)")
    add_renamed(p, "--grid-offset", "--offset", type=int_tuple,
                 help="shift of the second grid's seams (default: half a core)")
    p.add_argument("--patch-size", type=int_tuple,
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
    add_model_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.diagnostics import DiagnoseConfig, diagnose
    from seamfree.diagnostics.report import write_report
    from seamfree.models import load_model

    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    config = DiagnoseConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", grid_offset=args.grid_offset,
        normalization=normalization_option(args), patch_size=args.patch_size,
        batch_size=args.batch_size, ted_batches=args.ted_batches, ted_sampling=args.ted_sampling,
        threshold=args.threshold, device=args.device,
        seed=args.seed, activation=args.activation, **model_options(args),  # type: ignore[arg-type]
    )
    image = input_of(args, model)
    try:
        diagnosis = diagnose(model, image, ground_truth=args.gt, config=config, axes=args.axes,
                             name=args.name or Path(args.model).stem, key=key_of(args))
    finally:
        if image is not args.image:
            image.close()
    page = write_report(diagnosis, args.out)
    tm, ted = diagnosis.tile_mismatch, diagnosis.disparity
    print(f"{diagnosis.recommendation.verdict}: {diagnosis.recommendation.message}")
    for action in diagnosis.recommendation.actions:
        print(f"  -> {action}")
    print(f"TM_dice {tm.tm_dice:.3g}  TM_abs {tm.tm_abs:.2g}  TED_dice {ted.ted_dice:.3g}  TED_abs {ted.ted_abs:.2g}  "
          f"max|tiled-whole| {diagnosis.exactness.max_abs:.2g}")
    print(f"seams: {diagnosis.seams.summary}")
    print(f"report: {page} (JSON: {Path(args.out) / 'report.json'})")
    return 0
