"""``seamfree predict`` with glibc's default allocator settings vs seamfree's (``seamfree.allocator``).

    python benchmarks/allocator.py [--repeats 3] [--cases 3d 2d] [--out results/allocator.json]

Each run is a fresh ``seamfree predict`` subprocess (the CLI tunes the allocator first thing unless
``SEAMFREE_ALLOCATOR=system``); the two settings alternate within one run of this script, and the table is the
median over repeats. Reported per setting: wall seconds, the child's own user and system CPU seconds and peak
RSS (``os.wait4``).
Cases: ``3d``: a 3D U-Net (depth 2, 8 features, BatchRenorm) on a 64 × 512² uint8 volume, core 32 × 128²;
``2d``: a 2D U-Net (depth 4, 16 features) on a 2048² image, core 1024². The outputs of the two settings must be
bitwise identical (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics

CASES: dict[str, dict[str, Any]] = {
    "3d": {"dims": 3, "depth": 2, "features": 8, "shape": (64, 512, 512), "core": "32,128,128"},
    "2d": {"dims": 2, "depth": 4, "features": 16, "shape": (2048, 2048), "core": "1024"},
}


def _inputs(case: str, workdir: Path) -> tuple[Path, Path]:
    spec = CASES[case]
    torch.manual_seed(0)
    net = UNet(spec["dims"], 1, 1, depth=spec["depth"], features=spec["features"], norm="batchrenorm")
    model = save_model(randomize_norm_statistics(net), workdir / f"{case}.pt")
    image = workdir / f"{case}.npy"
    np.save(image, np.random.default_rng(0).integers(0, 255, size=spec["shape"], dtype=np.uint8))
    return model, image


def _predict(case: str, model: Path, image: Path, out: Path, allocator: str) -> dict[str, float]:
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "seamfree.cli.main", "predict", str(model), str(image), str(out),
                              "--core", CASES[case]["core"], "--output-kind", "uint8", "--overwrite", "-q"],
                             stdout=subprocess.DEVNULL, env={**os.environ, "SEAMFREE_ALLOCATOR": allocator})
    _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU times and peak RSS
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"seamfree predict failed ({allocator}, exit {child.returncode})")
    return {"seconds": seconds, "user": usage.ru_utime, "sys": usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def _output(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")["0"][:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["3d", "2d"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "allocator.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for case in args.cases:
            model, image = _inputs(case, workdir)
            runs: dict[str, list[dict[str, float]]] = {"system": [], "tuned": []}
            for _ in range(args.repeats):
                for allocator in runs:
                    runs[allocator].append(_predict(case, model, image, workdir / f"{allocator}.zarr", allocator))
            identical = bool(np.array_equal(_output(workdir / "system.zarr"), _output(workdir / "tuned.zarr")))
            summary = {allocator: {key: statistics.median(run[key] for run in values) for key in values[0]}
                       for allocator, values in runs.items()}
            summary["speedup"] = summary["system"]["seconds"] / summary["tuned"]["seconds"]
            results[case] = {"spec": CASES[case], "runs": runs, "median": summary, "identical": identical}
            for allocator in runs:
                m = summary[allocator]
                print(f"{case} {allocator:6s}: {m['seconds']:.1f} s (user {m['user']:.1f}, sys {m['sys']:.1f}), "
                      f"peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)
            print(f"{case}: speed-up {summary['speedup']:.2f}, outputs identical: {identical}", flush=True)
    results["torch_threads"] = torch.get_num_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
