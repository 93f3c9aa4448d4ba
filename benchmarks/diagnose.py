"""Cost of ``seamfree diagnose`` relative to one tiled prediction of the same image.

    python benchmarks/diagnose.py [--size 2048] [--repeats 3] [--out benchmarks/results/diagnose.json]

A depth-4, 16-feature BatchRenorm U-Net in eval mode (non-trivial running statistics), a blurred-noise uint8
image. "predict" is ``seamfree.predict`` with default settings; "diagnose" is ``seamfree.diagnose`` with default
settings (its own grid: at most half the image per axis). Medians of ``--repeats`` alternated runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import seamfree as sf
from seamfree.testing import randomize_norm_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diagnose.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = randomize_norm_statistics(sf.UNet(2, 1, 1, depth=4, features=16, norm="batchrenorm")).eval()
    from scipy import ndimage

    rng = np.random.default_rng(0)
    image = np.clip(ndimage.gaussian_filter(rng.normal(128, 60, (args.size, args.size)), 2) * 3 - 256, 0, 255)
    image = image.astype(np.uint8)
    times: dict[str, list[float]] = {"predict": [], "diagnose": []}
    parts: list[dict[str, float]] = []
    info = {}
    for repeat in range(args.repeats):
        start = time.perf_counter()
        report: list[sf.tiling.PredictionReport] = []
        sf.predict(model, image, report=report)
        times["predict"].append(time.perf_counter() - start)
        start = time.perf_counter()
        d = sf.diagnose(model, image)
        times["diagnose"].append(time.perf_counter() - start)
        parts.append(d.seconds)
        info = {"predict_core": list(report[0].grid.core), "predict_compute_ratio": report[0].grid.compute_ratio,
                "diagnose_core": d.geometry["core"], "diagnose_compute_ratio": d.geometry["compute_ratio"],
                "verdict": d.recommendation.verdict, "tm_abs": d.tile_mismatch.tm_abs,
                "exact_max_abs": d.exactness.max_abs}
        print(f"repeat {repeat + 1}: predict {times['predict'][-1]:.1f} s, diagnose {times['diagnose'][-1]:.1f} s "
              f"{d.seconds}")
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {"image": [args.size, args.size], "model": "UNet 2D depth 4, 16 features, batchrenorm (eval)",
              "threads": 2, "repeats": args.repeats, "seconds": times, "median_seconds": medians,
              "ratio_diagnose_to_predict": medians["diagnose"] / medians["predict"], "parts": parts, **info}
    print(f"median predict {medians['predict']:.1f} s, diagnose {medians['diagnose']:.1f} s, ratio "
          f"{result['ratio_diagnose_to_predict']:.2f} (goal <= 3)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
