"""Cost of the multiscale pyramid of an OME-Zarr output relative to its level-0 prediction, and what it buys a
viewer: the time to read one chunk of each level.

    python benchmarks/pyramid.py [--shape 64,512,512] [--repeats 2] [--out benchmarks/results/pyramid.json]
    python benchmarks/pyramid.py --shape 2048,2048 --out benchmarks/results/pyramid_2d.json   # 4 levels

A depth-3, 8-feature BatchRenorm U-Net of the shape's dimensionality; a zarr input; outputs with
``pyramid=False`` (sharded, the default layout, and unsharded: the cost of shards) and ``pyramid=True`` (the
difference is the pyramid pass); the pass is also timed alone (``write_pyramid`` on a finished level 0) with its
peak of traced Python/numpy memory; one chunk of every level is read.
Medians of ``--repeats`` runs, 2 CPU threads, run alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import zarr

import seamfree as sf
from seamfree.io.pyramid import write_pyramid
from seamfree.testing import randomize_norm_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,512,512")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pyramid.json")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dims = len(shape)
    model = randomize_norm_statistics(sf.UNet(dims, 1, 1, depth=3, features=8, norm="batchrenorm")).eval()
    folder = Path(tempfile.mkdtemp(prefix="seamfree-pyramid-"))
    core = (32, 128, 128) if dims == 3 else (512, 512)
    volume = zarr.create_array(str(folder / "in.zarr"), shape=shape, chunks=core, dtype="u1")
    volume[:] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    config = sf.PredictConfig(core=core)
    times: dict[str, list[float]] = {"level0_only": [], "level0_unsharded": [], "with_pyramid": [],
                                     "pyramid_pass": []}
    peaks = []
    for _ in range(args.repeats):
        for name, pyramid, sharding in (("level0_only", False, True), ("level0_unsharded", False, False),
                                        ("with_pyramid", True, True)):
            out = folder / f"{name}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            sf.predict(model, folder / "in.zarr", out,
                       config=dataclasses.replace(config, pyramid=pyramid, sharding=sharding))
            times[name].append(time.perf_counter() - started)
        group = zarr.open_group(str(folder / "level0_only.zarr"), mode="r+")
        markers = folder / "markers"
        shutil.rmtree(markers, ignore_errors=True)
        tracemalloc.start()
        started = time.perf_counter()
        levels = write_pyramid(group, markers, "mean")
        times["pyramid_pass"].append(time.perf_counter() - started)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        for level in range(1, levels):
            del group[str(level)]
    reads = {}
    group = zarr.open_group(str(folder / "with_pyramid.zarr"), mode="r")
    top = str(max(int(name) for name, _ in group.arrays()))
    for level in sorted((name for name, _ in group.arrays()), key=int):
        array = group[level]
        chunk = tuple(slice(0, c) for c in array.chunks)
        started = time.perf_counter()
        for _ in range(5):
            np.asarray(array[chunk])
        reads[level] = (time.perf_counter() - started) / 5
    medians = {k: statistics.median(v) for k, v in times.items()}
    level0_bytes = int(np.prod(shape)) * 4
    result = {"shape": list(shape), "repeats": args.repeats, "seconds": medians,
              "pyramid_over_level0": medians["pyramid_pass"] / medians["level0_only"],
              "pyramid_peak_traced_bytes": max(peaks), "level0_bytes": level0_bytes,
              "levels": int(top) + 1, "chunk_read_seconds": reads,
              "chunk_shapes": {lv: list(group[lv].chunks) for lv in reads}}
    print(f"{shape}: level 0 only {medians['level0_only']:.1f} s (unsharded {medians['level0_unsharded']:.1f} s), "
          f"with pyramid {medians['with_pyramid']:.1f} s; "
          f"pyramid pass alone {medians['pyramid_pass']:.2f} s ({result['pyramid_over_level0']:.1%} of level 0), "
          f"peak {max(peaks) / 2**20:.1f} MiB traced (level 0 is {level0_bytes / 2**20:.0f} MiB); "
          f"{int(top) + 1} levels")
    for level, seconds in reads.items():
        print(f"one chunk of level {level} {result['chunk_shapes'][level]}: {seconds * 1e3:.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
