"""``seamfree seams PRED``: was this prediction stitched from tiles that disagree? No model needed.

Its parser and its run live together, as for every command (:mod:`seamfree.cli.commands`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from seamfree.cli.options import int_tuple
from seamfree.errors import OutputExistsError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``seams`` to the command's subparsers."""
    s = subparsers.add_parser(
        "seams", help="find the tile grid of any prediction (seams without the model): period, offset, verdict")
    s.add_argument("prediction", help="a prediction: OME-Zarr, .zarr, .tif, .npy, .h5 (probabilities, logits, "
                                      "masks or instance labels; any size, read block by block)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--out", type=Path, help="folder to write seams.json and the seam map (seam_map.npy, .png)")
    s.add_argument("--period", type=int_tuple, help="the tile grid's period (core) when known: only it is tested")
    s.add_argument("--offset", type=int_tuple, help="where the first core starts per axis (with --period; 0)")
    s.add_argument("--kind", choices=["auto", "values", "labels"], default="auto",
                   help="values (probabilities, logits, masks) or instance labels (auto: integer types wider "
                        "than 8 bits and OME-Zarr label images are labels)")
    s.add_argument("--spatial-dims", type=int, choices=[2, 3],
                   help="2 or 3, for a 3-axis array that could be (C, Y, X) or (Z, Y, X)")
    s.add_argument("--axes", help="axis order of the stored array, e.g. ZYX, CYX, YXC")
    s.add_argument("--key", help="array inside a zarr group or dataset of an HDF5 file")
    s.add_argument("--overwrite", action="store_true", help="replace the files an earlier --out run wrote")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.diagnostics.seam_grid import find_seams, recorded_grid
    from seamfree.io.readers import open_image

    if args.out is not None:
        _check_out(args.out, args.overwrite)
    if args.offset is not None and args.period is None:
        from seamfree.errors import ConfigError

        raise ConfigError(f"--offset {args.offset} needs --period (the grid's core), e.g. --period 256")
    source = open_image(_local(args.prediction), spatial_dims=args.spatial_dims, axes=args.axes, key=args.key)
    period, offset = args.period, args.offset
    if period is None:
        period, offset = recorded_grid(args.prediction)
    result = find_seams(source, period=period, offset=offset, kind=args.kind)
    if args.out is not None:
        _write(result, args.out)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"{args.prediction}: {result.summary}")
    return 0


def _local(prediction: str) -> Any:
    """A local path as a Path (its absence named at once), a URL as given."""
    from seamfree.errors import DataError

    if "://" in prediction:
        return prediction
    if not Path(prediction).exists():
        raise DataError(f"prediction {prediction!r} does not exist; check the path (relative paths start from "
                        f"{str(Path.cwd())!r})")
    return Path(prediction)


_WRITTEN = ("seams.json", "seam_map.npy", "seam_map.png")


def _check_out(out: Path, overwrite: bool) -> None:
    existing = [name for name in _WRITTEN if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{str(out)!r} already holds {', '.join(existing)}; pass --overwrite to replace "
                                "them (nothing else in the folder is touched), or choose another --out")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} is a file, not a folder; choose a folder")


def _write(result: Any, out: Path) -> None:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    (out / "seams.json").write_text(json.dumps(result.to_dict(), indent=1))
    if result.seam_map is None:
        return
    np.save(out / "seam_map.npy", result.seam_map)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    picture = result.seam_map if result.seam_map.ndim == 2 else result.seam_map.max(axis=0)
    figure, axis = plt.subplots(figsize=(6, 6 * picture.shape[0] / max(picture.shape[1], 1) + 0.5))
    shown = axis.imshow(picture, cmap="magma", interpolation="nearest",
                        extent=(0, picture.shape[1] * result.segment[-1], picture.shape[0] * result.segment[-2], 0))
    axis.set_title(result.summary, fontsize=7, wrap=True)
    figure.colorbar(shown, ax=axis, label="step excess at the seam (prediction units)", shrink=0.8)
    figure.savefig(out / "seam_map.png", dpi=120, bbox_inches="tight")
    plt.close(figure)
