"""Training throughput (patches/s) of the seamfree trainer for 2D and 3D U-Nets.

    python benchmarks/training.py [--steps 40] [--device cpu] [--out benchmarks/results/training.json]

Runs ``seamfree.train`` on synthetic nuclei images and reads the per-step times it logs (sampling, augmentation,
forward, loss, backward, optimizer step; validation excluded). Reports the median over the steps after the
first five (warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from seamfree.training import load_config, train

CASES = {
    "2d": {"data": {"synthetic_shape": [512, 512], "synthetic_train": 2, "synthetic_val": 0},
           "model": {"spatial_dims": 2, "depth": 3, "features": 16},
           "training": {"batch_size": 4, "patch_size": [128, 128]}},
    "3d": {"data": {"synthetic_shape": [64, 192, 192], "synthetic_train": 1, "synthetic_val": 0},
           "model": {"spatial_dims": 3, "depth": 3, "features": 8, "scale_factors": [[1, 2, 2], [2, 2, 2], [2, 2, 2]]},
           "training": {"batch_size": 2, "patch_size": [32, 96, 96]}},
}


def measure(case: str, norm: str, steps: int, device: str) -> dict[str, float]:
    base = json.loads(json.dumps(CASES[case]))
    base["model"]["norm"] = norm
    base["training"].update({"iterations": steps, "validate_every": 10 * steps, "device": device, "threads": 2})
    with tempfile.TemporaryDirectory() as out:
        base["output"] = out
        train(load_config(base=base))
        rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    seconds = statistics.median(r["seconds"] for r in rows[5:])
    batch = base["training"]["batch_size"]
    return {"median_step_s": seconds, "patches_per_s": batch / seconds, "batch_size": batch,
            "patch_size": base["training"]["patch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "training.json")
    args = parser.parse_args()
    results = {"device": args.device, "torch": torch.__version__, "steps": args.steps, "cases": {}}
    for case in CASES:
        for norm in ("batchrenorm", "batch", "instance"):
            r = measure(case, norm, args.steps, args.device)
            results["cases"][f"{case}/{norm}"] = r
            print(f"{case:3s} {norm:12s} {r['patches_per_s']:7.2f} patches/s  (median step {r['median_step_s']:.3f} s, "
                  f"batch {r['batch_size']} × {r['patch_size']})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
