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


def _int_tuple(text: str) -> tuple[int, ...]:
    """Parse ``"256"`` or ``"32,256,256"`` into a tuple of ints."""
    try:
        return tuple(int(part) for part in text.split(","))
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
