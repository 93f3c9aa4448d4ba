"""BatchRenorm's schedule at batch size 1 and 2 on short budgets: a small sweep on two real datasets.

    SEAMFREE_DATA=../shared/data python benchmarks/renorm_schedule.py [--iterations 500] [--seeds 0]
        [--out benchmarks/results/renorm_schedule.json]

The study's standard recipe (2D U-Net depth 3, 8 features, patch 128², learning rate 2e-3, running momentum 0.05),
trained on drosophila-vnc mitochondria (sparse) and isbi2012 membranes, with BatchNorm and with BatchRenorm under
these schedules (warm-up = plain BatchNorm steps, ramp = steps over which r_max/d_max grow to 3/5):

- ``fraction``: the study's old default, warm-up 0.3 and ramp 0.3 of the iterations;
- ``momentum``: warm-up 3/momentum steps (the running statistics' settling time: e^-3 = 5 % of the start left),
  ramp 0.3 of the iterations;
- ``momentum_fast``: warm-up 3/momentum, ramp 3/momentum steps;
- ``short``: warm-up 20 steps, ramp 0.3 of the iterations.

Reported: test Dice (exact tiled prediction, eval mode, threshold 0.5, mean over the test images) per run, and the
mean over seeds. Results are written as JSON; docs/training.md holds the table. Each run is resumable only as a
whole (a finished run is read back from the JSON and skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seamfree.data.datasets import load_dataset
from seamfree.metrics import dice
from seamfree.models import load_model
from seamfree.tiling import PredictConfig, predict
from seamfree.training import load_config, train

DATASETS = {"mitochondria": {"source": "drosophila-vnc", "target": "mitochondria"},
            "isbi2012": {"source": "isbi2012"}}
MOMENTUM = 0.05
SCHEDULES = {
    "batchnorm": None,
    "fraction": lambda iterations: (int(0.3 * iterations), int(0.3 * iterations)),
    "momentum": lambda iterations: (math.ceil(3 / MOMENTUM), int(0.3 * iterations)),
    "momentum_fast": lambda iterations: (math.ceil(3 / MOMENTUM), math.ceil(3 / MOMENTUM)),
    "short": lambda iterations: (20, int(0.3 * iterations)),
}


def run(dataset: str, batch: int, schedule: str, seed: int, iterations: int) -> dict[str, Any]:
    norm = "batch" if schedule == "batchnorm" else "batchrenorm"
    options: dict[str, Any] = {"momentum": MOMENTUM}
    rule = SCHEDULES[schedule]
    if rule is not None:
        warmup, ramp = rule(iterations)
        options.update({"warmup_steps": warmup, "ramp_steps": ramp})
    with tempfile.TemporaryDirectory() as out:
        config = load_config(base={
            "data": DATASETS[dataset],
            "model": {"depth": 3, "features": 8, "norm": norm, "norm_options": options},
            "training": {"iterations": iterations, "batch_size": batch, "patch_size": [128, 128],
                         "learning_rate": 2e-3, "validate_every": iterations, "seed": seed, "threads": 2},
            "output": out,
        })
        started = time.perf_counter()
        result = train(config)
        seconds = time.perf_counter() - started
        model = load_model(result.last)
        scores = [dice(predict(model, image, config=PredictConfig(core=256))[0] > 0.5, mask[0] > 0)
                  for image, mask in load_dataset(DATASETS[dataset]["source"], "test",
                                                  target=DATASETS[dataset].get("target"))]
    return {"dataset": dataset, "batch_size": batch, "schedule": schedule, "seed": seed, "iterations": iterations,
            "norm_options": options, "test_dice": float(np.mean(scores)), "test_images": len(scores),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "renorm_schedule.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    done: list[dict[str, Any]] = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    for dataset in args.datasets:
        for batch in args.batch_sizes:
            for schedule in args.schedules:
                for seed in args.seeds:
                    key = (dataset, batch, schedule, seed, args.iterations)
                    if any((r["dataset"], r["batch_size"], r["schedule"], r["seed"], r["iterations"]) == key
                           for r in done):
                        continue
                    row = run(dataset, batch, schedule, seed, args.iterations)
                    done.append(row)
                    print(f"{dataset:12s} b{batch} {schedule:13s} seed {seed}: test Dice {row['test_dice']:.3f} "
                          f"({row['train_seconds']:.0f} s)", flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"momentum": MOMENTUM, "runs": done}, indent=2) + "\n")
    print("\nmean test Dice over seeds")
    for dataset in args.datasets:
        for batch in args.batch_sizes:
            cells = []
            for schedule in args.schedules:
                values = [r["test_dice"] for r in done if (r["dataset"], r["batch_size"], r["schedule"],
                                                           r["iterations"]) == (dataset, batch, schedule,
                                                                                args.iterations)]
                cells.append(f"{schedule} {np.mean(values):.3f}" if values else f"{schedule} –")
            print(f"  {dataset:12s} b{batch}: " + ", ".join(cells))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
