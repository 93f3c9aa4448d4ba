"""Scale: CPU per voxel, peak memory and files of `seamfree predict` with defaults on uint8 OME-Zarr inputs of
growing size, against a zarr-python chunk-by-chunk copy of the same input measured in the same run.

    python benchmarks/scale.py [--sizes 0.13,1.07] [--out benchmarks/results/scale.json]

The model is the cheap case of issue 35: a TorchScript ``Conv3d(1, 1, 1)``, ``--activation sigmoid
--output-kind uint8``, defaults otherwise (pyramid on, statistics from the image, the automatic plan). Inputs are
``(z, y, x)`` uint8 with chunks 64 × 256 × 256 (random values 0–63), generated on local disk and removed at the
end; sizes are in G voxels (0.13 = 128 × 1024², 1.07 = 256 × 2048², 8.6 = 512 × 4096²). Each run is a fresh
process; its CPU seconds (user + system of the process tree) and peak resident memory (sampled every 0.2 s) are
measured from outside. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

SHAPES = {0.13: (128, 1024, 1024), 1.07: (256, 2048, 2048), 8.6: (512, 4096, 4096)}
CHUNKS = (64, 256, 256)

COPY = """
import sys, itertools, zarr
src = zarr.open_array(sys.argv[1], mode="r")
dst = zarr.create_array(sys.argv[2], shape=src.shape, chunks=src.chunks, dtype=src.dtype)
for origin in itertools.product(*(range(0, s, c) for s, c in zip(src.shape, src.chunks))):
    window = tuple(slice(o, o + c) for o, c in zip(origin, src.chunks))
    dst[window] = src[window]
"""


def _tree_rss(pid: int) -> int:
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/status") as handle:
                total += sum(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
            with open(f"/proc/{current}/task/{current}/children") as handle:
                todo += [int(c) for c in handle.read().split()]
        except OSError:
            pass
    return total


def measure(command: list[str]) -> dict[str, float]:
    """CPU seconds, wall seconds and peak RSS (MB) of ``command``'s process tree."""
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    stop.set()
    sampler.join()
    error = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[:3]} failed: {error.strip()[-300:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.time() - started,
            "peak_rss_mb": max(peak, usage.ru_maxrss * 1024) / 2**20}


def make_input(path: Path, shape: tuple[int, ...]) -> None:
    import zarr

    array = zarr.create_array(str(path), shape=shape, chunks=CHUNKS, dtype="u1")
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], CHUNKS[0]):
        array[z:z + CHUNKS[0]] = rng.integers(0, 64, (CHUNKS[0], *shape[1:]), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.13,1.07", help="G voxels, of " + ", ".join(map(str, SHAPES)))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()
    import torch

    folder = Path(tempfile.mkdtemp(prefix="seamfree-scale-"))
    seamfree = str(Path(sys.executable).parent / "seamfree")
    results = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates making TorchScript
            torch.jit.save(torch.jit.script(torch.nn.Conv3d(1, 1, 1).eval()), str(folder / "conv1.pt"))
        (folder / "copy_input.py").write_text(COPY)
        for size in (float(s) for s in args.sizes.split(",")):
            shape = SHAPES[size]
            voxels = int(np.prod(shape))
            image, out = folder / f"in_{size}.zarr", folder / f"out_{size}.zarr"
            make_input(image, shape)
            run = measure([seamfree, "predict", str(folder / "conv1.pt"), str(image), str(out), "--activation",
                           "sigmoid", "--output-kind", "uint8", "-q"])
            files = sum(1 for p in out.rglob("*") if p.is_file())
            left = [p.name for p in folder.iterdir() if p.name.startswith(out.name + ".")]
            copy = measure([sys.executable, str(folder / "copy_input.py"), str(image), str(folder / "copy.zarr")])
            group = json.loads((out / "zarr.json").read_text())
            core = group["attributes"]["seamfree"]["fingerprint"]["grid"]["core"]
            row = {"g_voxels": size, "shape": list(shape), "ns_per_voxel": run["cpu_s"] * 1e9 / voxels,
                   "copy_ns_per_voxel": copy["cpu_s"] * 1e9 / voxels, **run, "files": files, "left_beside": left,
                   "core": core}
            row["ratio_to_copy"] = row["ns_per_voxel"] / row["copy_ns_per_voxel"]
            results.append(row)
            print(f"{size} G voxels {shape}: {row['ns_per_voxel']:.1f} ns/voxel ({row['ratio_to_copy']:.2f}× the "
                  f"zarr copy's {row['copy_ns_per_voxel']:.1f}), {run['wall_s']:.1f} s, peak {run['peak_rss_mb']:.0f} "
                  f"MB, {files} files, core {core}, left beside: {left or 'nothing'}")
            for path in (image, out, folder / "copy.zarr"):
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "TorchScript Conv3d(1, 1, 1), sigmoid, uint8", "chunks": list(CHUNKS),
                                    "runs": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
