"""Blockwise instance segmentation (``seamfree.segment``) against the whole-array reference: time and peak
memory, memory as the volume grows 4×, and the speed-up with 2 dask workers.

    python benchmarks/segment.py [--small 128,256,256] [--large 256,512,512] [--components 512,512,512]
                                 [--out benchmarks/results/segment.json]

Volumes of synthetic nuclei predictions (2 channels, foreground and boundary, uint8 probabilities × 255 as
``seamfree predict --output-kind uint8`` writes them; balls of radius 4–9 voxels at ~4 % of the voxels each,
written chunk by chunk, never whole) stored as zarr. Every measured run is a fresh process, so its peak resident
memory (VmHWM) is its own (dask workers' memory is not in the driver's figure):

- ``components`` on every volume (``--small``, ``--large`` = 8× its voxels, ``--components`` = 512³, 134 M
  voxels): ``seamfree.segment`` vs ``scipy.ndimage.label`` of the whole foreground;
- ``watershed`` on ``--small`` and ``--large``: ``seamfree.segment`` vs ``skimage.segmentation.watershed`` on
  the whole array (seeds and mask as seamfree computes them);
- ``watershed`` on ``--large`` with 2 dask workers (``seamfree.distributed.cluster_runner``; cluster start
  included).

Blocks 128³, 2 CPU threads, run alone. Each seamfree run also checks its labels against the reference's
(the same objects up to ids; else how many voxels differ: a uint8 boundary map has ties, which seamfree breaks
by position and skimage by its heap order) and records whether every voxel was proven exact.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 128


def _peak_rss() -> int:
    """This process's peak resident memory since it started (VmHWM: getrusage's maxrss would include the peak of
    the parent it was forked from, which holds whole arrays to check the labels)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_volume(path: Path, shape: tuple[int, ...], seed: int = 0) -> None:
    """A 2-channel uint8 nuclei prediction at ``path``, chunk by chunk."""
    import zarr

    rng = np.random.default_rng(seed)
    count = int(np.prod(shape) * 0.04 / (4 / 3 * np.pi * 6.5**3))
    centres = rng.uniform(0, 1, (count, 3)) * np.array(shape)
    radii = rng.uniform(4, 9, count)
    array = zarr.create_array(str(path), shape=(2, *shape), chunks=(2, 64, 128, 128), dtype=np.uint8,
                              fill_value=0)
    chunk = (64, 128, 128)
    for z in range(0, shape[0], chunk[0]):
        for y in range(0, shape[1], chunk[1]):
            for x in range(0, shape[2], chunk[2]):
                window = [(z, min(z + chunk[0], shape[0])), (y, min(y + chunk[1], shape[1])),
                          (x, min(x + chunk[2], shape[2]))]
                low = np.array([w[0] for w in window])
                high = np.array([w[1] for w in window])
                near = np.all((centres + radii[:, None] + 2 > low) & (centres - radii[:, None] - 2 < high), axis=1)
                grids = np.meshgrid(*(np.arange(a, b) for a, b in window), indexing="ij", sparse=True)
                foreground = np.zeros(tuple(high - low), np.float32)
                boundary = np.zeros_like(foreground)
                for centre, radius in zip(centres[near], radii[near]):
                    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
                    foreground = np.maximum(foreground, np.clip(radius + 0.5 - distance, 0, 1) * 0.95)
                    boundary = np.maximum(boundary, np.exp(-((distance - radius) ** 2) / 2.0) * 0.9)
                values = np.stack([foreground, boundary])
                array[(slice(None), *(slice(a, b) for a, b in window))] = np.rint(values * 255).astype(np.uint8)


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) id pairs of two label images and their voxel counts (one 64-bit key per voxel: a
    1D unique, much faster than a unique over rows)."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    width = int(b.max()) + 1
    keys, counts = np.unique(a * width + b, return_counts=True)
    return keys // width, keys % width, counts


def _same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.array_equal(a == 0, b == 0):
        return False
    first, second, _ = _pairs(a, b)
    return first.size == np.unique(first).size == np.unique(second).size


def _differing_voxels(labels: np.ndarray, reference: np.ndarray) -> int:
    """Voxels whose object is not the reference object it overlaps most (0 for the same objects up to ids)."""
    ours, theirs, counts = _pairs(labels, reference)
    order = np.lexsort((-counts, ours))  # per id of ours, the largest overlap first
    first = np.ones(order.size, bool)
    first[1:] = ours[order][1:] != ours[order][:-1]
    table = np.zeros(int(labels.max()) + 1, np.int64)
    table[ours[order][first]] = theirs[order][first]
    return int(np.count_nonzero(table[labels] != reference))


def case(kind: str, volume: str, out: str, workers: int) -> dict:
    """One measured run (in its own process)."""
    import zarr

    started = time.perf_counter()
    if kind == "seamfree":
        from seamfree.segment import SegmentConfig, segment

        method = Path(out).stem.split("-")[0]
        config = SegmentConfig(method=method, block=BLOCK, pyramid=False,  # type: ignore[arg-type]
                               foreground_channel=0 if method == "components" else None)
        if workers:
            from seamfree.distributed import ClusterConfig, cluster_runner

            with cluster_runner(ClusterConfig(workers=workers, memory_limit="4GiB")) as run:
                result = segment(volume, out, config=config, run=run)
        else:
            result = segment(volume, out, config=config)
        return {"seconds": time.perf_counter() - started, "peak_rss": _peak_rss(), "objects": result.objects,
                "exact": result.exact, "unverified_voxels": result.unverified_voxels, "halo": list(result.halo)}
    from scipy import ndimage

    values = np.asarray(zarr.open_array(volume, mode="r")).astype(np.float32) / 255
    foreground, boundary = values
    mask = foreground > 0.5
    if kind == "scipy-label":
        labels, count = ndimage.label(mask)
    else:
        from skimage.segmentation import watershed

        seeds, _ = ndimage.label((foreground - boundary > 0.5) & mask)
        labels = watershed(boundary, seeds, mask=mask)
        count = int(labels.max())
    seconds = time.perf_counter() - started
    np.save(out, labels.astype(np.uint32))
    return {"seconds": seconds, "peak_rss": _peak_rss(), "objects": int(count)}


def _run(kind: str, volume: Path, out: Path, workers: int = 0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, __file__, "--case", kind, str(volume), str(out), str(workers)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", default="128,256,256")
    parser.add_argument("--large", default="256,512,512")
    parser.add_argument("--components", default="512,512,512")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "segment.json")
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, volume, out, workers = args.case
        print(json.dumps(case(kind, volume, out, int(workers))))
        return
    import zarr

    folder = Path(tempfile.mkdtemp(prefix="seamfree-segment-bench-"))
    results: dict = {"block": BLOCK, "cases": {}}
    for name, text in (("components", args.components), ("small", args.small), ("large", args.large)):
        shape = tuple(int(s) for s in text.split(","))
        started = time.perf_counter()
        make_volume(folder / f"{name}.zarr", shape)
        print(f"{name} {shape}: volume written in {time.perf_counter() - started:.0f} s", flush=True)
        runs = [("components", "reference", "scipy-label", 0), ("components", "seamfree", "seamfree", 0)]
        if name != "components":
            runs += [("watershed", "reference", "skimage-watershed", 0), ("watershed", "seamfree", "seamfree", 0)]
        if name == "large":
            runs.append(("watershed", "seamfree_2_workers", "seamfree", 2))
        entry: dict = {"shape": list(shape), "voxels": int(np.prod(shape))}
        for method, label, kind, workers in runs:
            out = folder / (f"ref-{name}.npy" if kind != "seamfree" else f"{method}-{name}-{label}.zarr")
            measured = _run(kind, folder / f"{name}.zarr", out, workers)
            if kind == "seamfree":
                ours = np.asarray(zarr.open_group(str(out), mode="r")["0"])[0]
                reference = np.load(folder / f"ref-{name}.npy")
                measured["same_objects_as_reference"] = _same_objects(ours, reference)
                measured["voxels_differing_from_reference"] = _differing_voxels(ours, reference)
            entry.setdefault(method, {})[label] = measured
            print(f"  {method} {label}: {json.dumps(measured)}", flush=True)
        results["cases"][name] = entry
    small, large, biggest = (results["cases"][n] for n in ("small", "large", "components"))
    growth = large["voxels"] / small["voxels"]
    results["volume_growth"] = growth
    for method in ("components", "watershed"):
        results[f"{method}_memory_growth"] = (large[method]["seamfree"]["peak_rss"]
                                              / small[method]["seamfree"]["peak_rss"])
        results[f"{method}_reference_memory_growth"] = (large[method]["reference"]["peak_rss"]
                                                        / small[method]["reference"]["peak_rss"])
    results["components_memory_growth_to_largest"] = (biggest["components"]["seamfree"]["peak_rss"]
                                                      / small["components"]["seamfree"]["peak_rss"])
    results["speedup_2_workers"] = (large["watershed"]["seamfree"]["seconds"]
                                    / large["watershed"]["seamfree_2_workers"]["seconds"])
    print(f"peak memory when the volume grows {growth:.0f}×: components seamfree "
          f"{results['components_memory_growth']:.2f}× "
          f"(reference {results['components_reference_memory_growth']:.2f}×), "
          f"watershed seamfree {results['watershed_memory_growth']:.2f}× (reference "
          f"{results['watershed_reference_memory_growth']:.2f}×); 2 dask workers: "
          f"{results['speedup_2_workers']:.2f}× the speed of one process")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
