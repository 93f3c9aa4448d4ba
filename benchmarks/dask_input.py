"""A dask array larger than the memory budget, predicted into an OME-Zarr output without ever being loaded whole:
peak resident memory of the process against the array's size.

    python benchmarks/dask_input.py [--side 16384] [--budget-mib 64] [--out benchmarks/results/dask_input.json]

The input is a lazy dask array (``side``² uint8 values made chunk by chunk from a seeded generator, nothing on
disk, never materialised), the model a depth-1, 4-feature BatchRenorm 2D U-Net, the output uint8 OME-Zarr on
disk, the memory budget ``--budget-mib``. The peak is the process's maximum resident set size (getrusage), taken
after the imports and the model; the run fails (exit 1) when the peak increase reaches the input's size. 2 CPU
threads, run alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import torch

import seamfree as sf
from seamfree.testing import randomize_norm_statistics


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _chunk(block_info: dict | None = None) -> np.ndarray:
    location = block_info[None]["chunk-location"]  # type: ignore[index]
    shape = block_info[None]["chunk-shape"]  # type: ignore[index]
    rng = np.random.default_rng(location[0] * 1_000_003 + location[1])
    return rng.integers(0, 255, shape, dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--budget-mib", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dask_input.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = randomize_norm_statistics(sf.UNet(2, 1, 1, depth=1, features=4, norm="batchrenorm")).eval()
    image = da.map_blocks(_chunk, chunks=((args.chunk,) * (args.side // args.chunk),) * 2, dtype=np.uint8)
    folder = Path(tempfile.mkdtemp(prefix="seamfree-dask-input-"))
    budget = args.budget_mib * 2**20
    config = sf.PredictConfig(memory_budget=budget, output_kind="uint8")
    before = _peak_rss()
    started = time.perf_counter()
    report: list = []
    sf.predict(model, image, folder / "out.zarr", config=config, report=report)
    seconds = time.perf_counter() - started
    increase = _peak_rss() - before
    size = int(np.prod(image.shape)) * image.dtype.itemsize
    result = {
        "input": {"shape": list(image.shape), "dtype": "uint8", "bytes": size, "chunks": args.chunk,
                  "kind": "lazy dask array (map_blocks, nothing on disk)"},
        "memory_budget_bytes": budget,
        "core": list(report[0].grid.core), "halo": list(report[0].grid.halo),
        "peak_rss_before_bytes": before, "peak_rss_increase_bytes": increase,
        "peak_increase_over_input": increase / size, "seconds": seconds,
        "voxels_per_second": int(np.prod(image.shape)) / seconds, "threads": 2,
    }
    shutil.rmtree(folder, ignore_errors=True)
    print(f"input {image.shape} uint8 = {size / 2**20:.0f} MiB (lazy dask), budget {args.budget_mib} MiB, core "
          f"{report[0].grid.core}: peak RSS +{increase / 2**20:.0f} MiB = {increase / size:.2f}x the input, "
          f"{seconds:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if increase >= size:
        raise SystemExit(f"the peak memory increase {increase} reached the input's size {size}: it was loaded")


if __name__ == "__main__":
    main()
