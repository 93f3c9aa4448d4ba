"""``seamfree train [CONFIG]``: train a 2D/3D U-Net or the small ViT with any normalization."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the command's subparsers."""
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
    t.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.training import load_config, train

    overrides = list(args.set or [])
    for key, value in (("output", args.out), ("training.iterations", args.iterations),
                       ("training.device", args.device), ("model.norm", args.norm)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    dice = "n/a" if result.best_dice is None else f"{result.best_dice:.4f}"
    print(f"trained {result.iterations} iterations in {result.seconds:.0f} s; best validation Dice {dice}; "
          f"checkpoints {result.best} and {result.last}")
    return 0
