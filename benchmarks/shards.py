"""Job arrays (`--shard I/N`): the planner at petabyte scale, and the CPU cost of N shares against one process.

    python benchmarks/shards.py [--planner-only] [--shape 128,768,768] [--tasks 4] [--repeats 3]
                                [--out benchmarks/results/shards.json]
    python benchmarks/shards.py --example      # docs/hpc.md's 10 TB example, from the planner

1. Planner simulation: a virtual 1 PB uint8 volume (100,000³ voxels, core 128³, halo 16: 4.8·10⁸ tiles) cut into
   10,000 shares; every share's record written as a running task writes it, then ``seamfree status`` computed
   from them (its JSON and its text), timed; the size of the progress records on disk.
2. Overhead: the same plan (a 3D depth-2 U-Net, a ``--shape`` float32 zarr input, core 32 × 128², given
   statistics) run by one process and by N processes one after the other (``--shard I/N``, each a fresh
   ``seamfree predict`` as an array task runs it), CPU seconds of the children (user + system) measured by the
   kernel. The ratio is N shares' CPU / one process's CPU, median of ``--repeats``; also the CPU of a task with
   nothing to do (a share of the complete output: the fixed cost of a process, mostly importing torch). Both with
   OMP_NUM_THREADS=1, run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def planner(folder: Path) -> dict[str, float]:
    from seamfree.cli.commands.status import _text
    from seamfree.io.markers import atomic_write_text
    from seamfree.io.progress import ShardProgress, output_status, shards_folder
    from seamfree.tiling.grid import TileGrid
    from seamfree.tiling.shards import partition

    shape, core, halo, count = (100_000,) * 3, (128,) * 3, (16,) * 3, 10_000
    started = time.perf_counter()
    grid = TileGrid.create(shape, core, halo)
    bounds = partition(grid, count)
    cut = time.perf_counter() - started
    out = folder / "petabyte.zarr"
    markers = out.with_name(out.name + ".seamfree")
    markers.mkdir(parents=True)
    atomic_write_text(markers / "fingerprint.json", json.dumps({"grid": {"core": list(core)}}))
    shards = shards_folder(out, count)
    shards.mkdir(parents=True)
    atomic_write_text(shards / "plan.json", json.dumps({"count": count, "bounds": bounds, "tiles": len(grid)}))
    atomic_write_text(shards.parent / "current.json", json.dumps({"count": count}))
    rng = np.random.default_rng(0)
    for index in range(count):
        units = bounds[index + 1] - bounds[index]
        record = ShardProgress(out, index, count, units)
        record.update(int(units * rng.random()), "paused" if index % 3 else "done", force=True)
    records = sum(p.stat().st_size for p in markers.rglob("*") if p.is_file())
    started = time.perf_counter()
    status = output_status(out)
    text = _text(status)
    status_seconds = time.perf_counter() - started
    print(f"planner: {len(grid):.3g} tiles of a 1 PB volume cut into {count} shares in {cut:.2f} s; status of "
          f"{count} shares in {status_seconds:.2f} s; progress records {records / 1e6:.2f} MB on disk")
    print(text.splitlines()[0])
    return {"tiles": len(grid), "shares": count, "partition_seconds": cut, "status_seconds": status_seconds,
            "records_bytes": records, "largest_share": max(np.diff(bounds).tolist()),
            "smallest_share": min(np.diff(bounds).tolist())}


def example(tasks: int = 200, rate: float = 40e6) -> dict[str, object]:
    """docs/hpc.md's worked example: a 10 TB volume in ``tasks`` shares, at ``rate`` computed voxels/s per GPU."""
    import math

    from seamfree.tiling.grid import TileGrid
    from seamfree.tiling.shards import partition

    grid = TileGrid.create((8192, 35000, 35000), (128, 512, 512), (32, 64, 64), network_stride=16)
    sizes = np.diff(partition(grid, tasks))
    per_share = int(sizes.max()) * math.prod(grid.tile_shape)
    total_hours = len(grid) * math.prod(grid.tile_shape) / rate / 3600
    print(f"10 TB example: {len(grid)} tiles {grid.grid_shape}, tile {grid.tile_shape}, compute ratio "
          f"{grid.compute_ratio:.2f}; {tasks} shares of {sizes.min()}-{sizes.max()} tiles, {per_share:.2g} computed "
          f"voxels each: {per_share / rate / 60:.0f} min per share, {total_hours:.0f} GPU-hours at {rate:.2g} voxels/s")
    return {"tiles": len(grid), "grid_shape": list(grid.grid_shape), "compute_ratio": grid.compute_ratio,
            "tasks": tasks, "tiles_per_share": [int(sizes.min()), int(sizes.max())],
            "minutes_per_share": per_share / rate / 60, "gpu_hours": total_hours}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str]) -> float:
    before = _children_cpu()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return _children_cpu() - before


def overhead(folder: Path, shape: tuple[int, ...], tasks: int, repeats: int) -> dict[str, object]:
    import torch
    import zarr

    import seamfree as sf
    from seamfree.testing import randomize_norm_statistics

    torch.manual_seed(0)
    net = sf.UNet(3, 1, 1, depth=2, features=4, norm="batch")
    randomize_norm_statistics(net)
    sf.save_model(net.eval(), folder / "m.pt")
    volume = zarr.create_array(str(folder / "in.zarr"), shape=shape, chunks=(32, 128, 128), dtype="f4")
    volume[:] = np.random.default_rng(0).normal(size=volume.shape).astype(np.float32)
    seamfree = str(Path(sys.executable).parent / "seamfree")

    def command(out: Path) -> list[str]:
        return [seamfree, "predict", str(folder / "m.pt"), str(folder / "in.zarr"), str(out), "--core",
                "32,128,128", "--intensity-offset", "0", "--intensity-scale", "1", "-q"]

    one, sharded = [], []
    for _ in range(repeats):
        shutil.rmtree(folder / "one.zarr", ignore_errors=True)
        one.append(_run(command(folder / "one.zarr")))
        shutil.rmtree(folder / "sharded.zarr", ignore_errors=True)
        sharded.append(sum(_run([*command(folder / "sharded.zarr"), "--shard", f"{i}/{tasks}"])
                           for i in range(tasks)))
    idle = statistics.median(_run([*command(folder / "sharded.zarr"), "--shard", f"0/{tasks}"]) for _ in range(3))
    ratio = statistics.median(sharded) / statistics.median(one)
    print(f"overhead, {shape}: one process {statistics.median(one):.1f} CPU s, {tasks} shares "
          f"{statistics.median(sharded):.1f} CPU s: {ratio:.3f}× (median of {repeats}); a task with nothing to do "
          f"costs {idle:.2f} CPU s")
    return {"shape": list(shape), "tasks": tasks, "one_cpu_seconds": one, "shares_cpu_seconds": sharded,
            "ratio": ratio, "idle_task_cpu_seconds": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planner-only", action="store_true")
    parser.add_argument("--example", action="store_true", help="print docs/hpc.md's 10 TB example and stop")
    parser.add_argument("--shape", default="128,768,768")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shards.json")
    args = parser.parse_args()
    if args.example:
        example()
        return
    folder = Path(tempfile.mkdtemp(prefix="seamfree-shards-"))
    try:
        result: dict[str, object] = {"planner": planner(folder)}
        if not args.planner_only:
            shape = tuple(int(s) for s in args.shape.split(","))
            result["overhead"] = overhead(folder, shape, args.tasks, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
