"""Distributed prediction: bounded worker memory at two volume sizes, and scaling with the number of workers.

    python benchmarks/dask_cluster.py [--depths 128 512] [--features 4] [--memory-limit 1GiB] [--out FILE]

A uint8 zarr volume D × 1024 × 1024 (chunks 32 × 128²) is predicted into OME-Zarr by a small 3D U-Net (depth 1,
4 features, or ``--features``; the model is not the point, memory and scheduling are) with core 32 × 128² on a
LocalCluster. On CPU the model's forward pass takes ~98 % of a task's time (py-spy on a worker); ``--features 1``
makes it cheaper but gained little here (1.02 vs ~0.8 MB/s), because much of that time is page faults, which
``--tune-allocator`` removes (workers spawned with seamfree's glibc settings, ``seamfree.allocator``; they
then keep their peak memory, so give them more than 1 GiB).
Peak RSS of every worker process is read from the worker itself at the end (``ru_maxrss``). Scaling: the
smallest volume with 1 and with 2 workers; parallel efficiency = speed-up / workers.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seamfree.distributed import ClusterConfig, predict_distributed, start_local_cluster
from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import IntensityNormalization, PredictConfig


def _volume(path: Path, depth: int) -> None:
    import zarr

    array = zarr.create_array(str(path), shape=(depth, 1024, 1024), chunks=(32, 128, 128), dtype="u1")
    rng = np.random.default_rng(0)
    slab = rng.integers(0, 255, size=(32, 1024, 1024), dtype=np.uint8)
    for z in range(0, depth, 32):
        array[z:z + 32] = slab


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(model: Path, volume: Path, workers: int, memory_limit: str, workdir: Path,
        tune_allocator: bool = False) -> dict[str, Any]:
    from distributed import Client

    config = PredictConfig(core=(32, 128, 128), tiles_per_batch=1, output_kind="uint8",
                           normalization=IntensityNormalization("percentile", offset=(0.0,), scale=(255.0,)))
    out = workdir / f"pred_{volume.stem}_{workers}.zarr"
    with start_local_cluster(ClusterConfig(workers=workers, memory_limit=memory_limit,
                                                          tune_allocator=tune_allocator)) as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        report = predict_distributed(model, volume, out, config=config,
                                     cluster=ClusterConfig(scheduler=cluster.scheduler_address, tiles_per_task=2))
        seconds = time.perf_counter() - start
        peaks = sorted(client.run(_peak_rss_mb).values())
    return {"workers": workers, "seconds": seconds, "tiles": report.tiles_total, "tasks": report.tasks,
            "voxels_per_second": report.voxels_per_second, "worker_peak_rss_mb": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--features", type=int, default=4, help="U-Net features (fewer: faster, same memory path)")
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--tune-allocator", action="store_true", help="workers with seamfree's glibc settings")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1-worker run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dask_cluster.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, Any] = {"memory_limit": args.memory_limit, "features": args.features,
                               "tune_allocator": args.tune_allocator, "memory": {},
                               "scaling": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        net = UNet(3, 1, 1, depth=1, features=args.features, norm="batchrenorm")
        model = save_model(randomize_norm_statistics(net), workdir / "model.pt")
        for depth in args.depths:
            volume = workdir / f"volume_{depth}.zarr"
            _volume(volume, depth)
            r = run(model, volume, 2, args.memory_limit, workdir, args.tune_allocator)
            r["volume_mb"] = depth * 1024 * 1024 / 2**20
            r["driver_peak_rss_mb"] = _peak_rss_mb()
            results["memory"][str(depth)] = r
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))  # each size as soon as it is measured
            print(f"{depth}×1024² ({r['volume_mb']:.0f} MB) on 2 workers: {r['seconds']:.1f} s, worker peak RSS "
                  f"{r['worker_peak_rss_mb']} MB ({r['volume_mb'] / r['seconds']:.2f} MB/s)", flush=True)
        if args.no_scaling:
            return
        smallest = workdir / f"volume_{min(args.depths)}.zarr"
        one = run(model, smallest, 1, args.memory_limit, workdir, args.tune_allocator)
        two = results["memory"][str(min(args.depths))]
        results["scaling"] = {"1": one, "2": two, "speedup": one["seconds"] / two["seconds"],
                              "efficiency": one["seconds"] / two["seconds"] / 2}
        print(f"scaling on {min(args.depths)}×1024²: 1 worker {one['seconds']:.1f} s, "
              f"2 workers {two['seconds']:.1f} s, "
              f"speed-up {results['scaling']['speedup']:.2f}, efficiency {results['scaling']['efficiency']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
