"""The ``seamfree`` command line: argument parsing only; every command calls a public library function.

Errors raised on purpose (``SeamfreeError``) and bad arguments print one line and exit with status 2;
tracebacks appear only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from seamfree import __version__
from seamfree.errors import SeamfreeError

logger = logging.getLogger("seamfree.cli")

EXIT_BAD_INPUT = 2


def _int_tuple(text: str) -> int | tuple[int, ...]:
    """Parse ``"256"`` (every axis) into an int, ``"32,256,256"`` into a tuple of ints."""
    try:
        values = tuple(int(part) for part in text.split(","))
        return values[0] if len(values) == 1 else values
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from exc


def _cmd_audit(args: argparse.Namespace) -> int:
    from seamfree.layers import audit_norms
    from seamfree.models import load_model

    audit = audit_norms(load_model(args.model, allow_pickle=args.allow_pickle))
    if args.json:
        print(json.dumps(audit.to_dict(), indent=2))
        return 0
    print(f"verdict: {audit.verdict}\n{audit.summary}")
    for layer in audit.layers:
        flag = {True: "DEPENDS ON TILE", False: "ok", None: "unknown"}[layer.tile_dependent]
        print(f"  {layer.name:40s} {layer.type:18s} {layer.statistics:13s} {flag}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from seamfree.layers import convert_norm
    from seamfree.models import load_model, model_metadata, save_model

    model = load_model(args.model, allow_pickle=args.allow_pickle)
    converted = convert_norm(model, args.to, from_=args.from_)
    metadata = {**model_metadata(model), "converted_from": str(args.model), "converted_norm": args.from_}
    path = save_model(converted, args.out, metadata=metadata)
    print(f"wrote {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from seamfree.models import load_model
    from seamfree.tiling import IntensityNormalization, PredictConfig, PredictionReport, predict

    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    if args.offset is not None:
        normalization = IntensityNormalization(args.normalization, offset=(args.offset,), scale=(args.scale,))
    else:
        normalization = IntensityNormalization(args.normalization)
    config = PredictConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", stitching=args.stitching,
        overlap=args.overlap, blend_window=args.blend_window, batch_size=args.batch_size, device=args.device,
        amp=args.amp, tta=args.tta, normalization=normalization, output_kind=args.output_kind,
        threshold=args.threshold, pinned_core=args.core is not None and args.pin_core,
        allow_small_halo=args.allow_small_halo, overwrite=args.overwrite,
    )
    report: list[PredictionReport] = []
    predict(model, args.image, args.out, config=config, axes=args.axes, progress=not args.quiet, report=report)
    done = report[0]
    print(f"wrote {args.out}: {done.tiles_computed} of {done.tiles_total} tiles computed in {done.seconds:.1f} s "
          f"(core {done.grid.core}, halo {done.grid.halo}, {done.grid.compute_ratio:.2f}× voxels computed)")
    return 0


def _add_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="seamless tiled prediction of a 2D/3D image of any size")
    p.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    p.add_argument("image", help="input: .zarr/OME-Zarr, .tif, .h5 (with --key) or .npy")
    p.add_argument("out", type=Path, help="output: .zarr (OME-Zarr) or .tif; rerun to resume")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, CYX, YXC (default: channel-first)")
    p.add_argument("--core", type=_int_tuple, help="core shape, e.g. 512 or 32,256,256 (default: from memory)")
    p.add_argument("--pin-core", action="store_true", help="error if --core is not a multiple of the stride")
    p.add_argument("--halo", type=_int_tuple, help="halo per side (default: measured receptive field)")
    p.add_argument("--allow-small-halo", action="store_true", help="accept a halo below the receptive field")
    p.add_argument("--stitching", choices=["crop", "blend"], default="crop")
    p.add_argument("--overlap", type=_int_tuple, help="core overlap for --stitching blend")
    p.add_argument("--blend-window", choices=["linear", "gaussian"], default="linear")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision on CUDA")
    p.add_argument("--tta", action="store_true", help="average over flips of the spatial axes")
    p.add_argument("--normalization", choices=["percentile", "meanstd", "none", "per_tile"], default="percentile")
    p.add_argument("--offset", type=float, help="given intensity offset (skips the statistics pass)")
    p.add_argument("--scale", type=float, help="given intensity scale, with --offset")
    p.add_argument("--output-kind", choices=["float32", "uint8", "mask"], default="float32")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--overwrite", action="store_true", help="delete an existing output instead of resuming")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``seamfree`` command."""
    parser = argparse.ArgumentParser(
        prog="seamfree", description="Segmentation of very large images, free of tiling artifacts."
    )
    parser.add_argument("--version", action="version", version=f"seamfree {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    audit = commands.add_parser("audit", help="list the normalization layers of a model and whether they make "
                                "predictions depend on the tile")
    audit.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.add_argument("--allow-pickle", action="store_true", help="load a pickled nn.Module you trust")
    audit.set_defaults(handler=_cmd_audit)

    convert = commands.add_parser("convert", help="convert a model's BatchNorm layers to BatchRenorm (exact)")
    convert.add_argument("model", type=Path)
    convert.add_argument("--to", default="batchrenorm", choices=["batchrenorm", "batch"])
    convert.add_argument("--from", dest="from_", default="batch", choices=["batch", "batchrenorm"])
    convert.add_argument("--out", type=Path, required=True, help="path of the converted checkpoint")
    convert.add_argument("--allow-pickle", action="store_true")
    convert.set_defaults(handler=_cmd_convert)

    _add_predict(commands)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    try:
        return int(args.handler(args))
    except (SeamfreeError, argparse.ArgumentTypeError) as exc:
        if args.verbose:
            raise
        print(f"seamfree {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"seamfree {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
