"""Validation of the calibrated seam test on the bundled real datasets: does it flag the models whose tiles
disagree, and never the models with fixed statistics?

    SEAMFREE_DATA=../shared/data python benchmarks/seam_validation.py [--out benchmarks/results/seam_validation.json]
        [--iterations 150] [--study-dir seamfree-seam-validation]

Trains small U-Nets (the study's grid at a short budget, 8 features, 128² patches, batch 4) for every norm of the
study on every real dataset (drosophila-vnc mitochondria and membranes, isbi2012, coelho2009), then diagnoses one
test image per dataset at two tile sizes (core 128 and 64): tile mismatch, and the seam test of
:mod:`seamfree.diagnostics.seams` on the stitched prediction. Prints and writes, per model and tile size,
TM_abs, the seam score with its interval, z and the verdict, then the two rates the issue asks for:

- flagged among the tile-wise models (instance, group norms) whose TM_abs > 1e-3 (should be 100 %);
- flagged among the fixed-statistics models (batch, batchrenorm, instance_tracked, none) (should be 0 %).

Resumable (the study's cache in ``--study-dir``). 2 CPU threads; tens of minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from seamfree.study import load_study_config, run_study

TILE_WISE = ("instance", "group")
FIXED = ("batch", "batchrenorm", "instance_tracked", "none")
NORMS = [*FIXED, *TILE_WISE]
DATASETS = [{"name": "drosophila-vnc", "target": "mitochondria"}, {"name": "drosophila-vnc", "target": "membranes"},
            {"name": "isbi2012"}, {"name": "coelho2009", "subset": "gnf"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "seam_validation.json")
    parser.add_argument("--study-dir", type=Path, default=Path("seamfree-seam-validation"))
    parser.add_argument("--iterations", type=int, default=150)
    args = parser.parse_args()
    overrides = {
        "grid": {"datasets": DATASETS, "norms": NORMS, "batch_sizes": [4]},
        "training": {"iterations": args.iterations, "patch_size": [128, 128], "features": 8,
                     "checkpoint_every": args.iterations},
        "evaluation": {"test_images": 1, "core": 128, "small_core": 64, "ted_batches": 1},
    }
    args.study_dir.mkdir(parents=True, exist_ok=True)
    config_file = args.study_dir / "seam_validation.yaml"
    config_file.write_text(yaml.safe_dump(overrides))
    config = load_study_config(config_file, profile="quick", overrides=["threads=2"])
    result = run_study(config, args.study_dir, only=["grid/*"])
    rows = []
    for row in result.rows:
        if row["status"] != "done" or not str(row["name"]).startswith("grid/"):
            continue
        for size, suffix in (("core 128", ""), ("core 64", "_small")):
            rows.append({"run": row["name"], "norm": row["norm"], "dataset": row["dataset"], "tiles": size,
                         "tm_abs": row[f"tm_abs{suffix}"], "seam_score": row[f"seam_score{suffix}"],
                         "z": row[f"seam_z{suffix}"], "detected": row[f"seams_detected{suffix}"]})
    tile_wise = [r for r in rows if r["norm"] in TILE_WISE and (r["tm_abs"] or 0) > 1e-3]
    fixed = [r for r in rows if r["norm"] in FIXED]

    def rate(group: list[dict]) -> float | None:
        flags = [r["detected"] for r in group if r["detected"] is not None]
        return sum(1 for f in flags if f >= 0.5) / len(flags) if flags else None

    summary = {"flagged_tile_wise_with_tm_abs_over_1e-3": rate(tile_wise), "tile_wise_cases": len(tile_wise),
               "flagged_fixed_statistics": rate(fixed), "fixed_cases": len(fixed),
               "iterations": args.iterations, "failed_runs": result.failed}
    print(f"{'dataset':28s} {'norm':17s} {'tiles':9s} {'TM_abs':>9s} {'score':>6s} {'z':>7s} detected")
    for r in rows:
        z = f"{r['z']:7.1f}" if r["z"] is not None else "      —"
        score = f"{r['seam_score']:6.2f}" if r["seam_score"] is not None else "     —"
        print(f"{r['dataset']:28s} {r['norm']:17s} {r['tiles']:9s} {r['tm_abs']:9.2g} {score} {z} "
              f"{'yes' if (r['detected'] or 0) >= 0.5 else 'no'}")
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
