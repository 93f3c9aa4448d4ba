"""How long ``seamfree demo`` takes, as a new user runs it, and the demo's main figure.

    python benchmarks/demo.py [--repeats 3] [--out benchmarks/results/demo.json] [--figure docs/figures/demo_crops.png]

Runs the command exactly as the README shows it (``seamfree demo --out DIR``, a new process each time, default
settings: 300 iterations per model, a 1024² image), ``--repeats`` times, and reports the median wall time with
the conditions: CPU cores, torch threads, whether anything else was running (the 1-minute load average before
the first run). Copies the last run's ``report/figures/crops.png`` to ``--figure`` (the README's picture) and
prints each run's indicators from ``report.json``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo.json")
    parser.add_argument("--figure", type=Path, default=None, help="copy the last run's crops figure here")
    args = parser.parse_args()
    import torch

    conditions = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                  "load_average_1min_before": os.getloadavg()[0], "python": platform.python_version(),
                  "torch": torch.__version__}
    seconds, runs = [], []
    folder = Path(tempfile.mkdtemp(prefix="seamfree-demo-bench-"))
    for k in range(args.repeats):
        out = folder / f"run{k}"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "seamfree.cli.main", "demo", "--out", str(out), "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - started)
        report = json.loads((out / "report" / "report.json").read_text())
        runs.append({d["name"]: {"verdict": d["recommendation"]["verdict"], "tm_abs": d["tile_mismatch"]["tm_abs"],
                                 "seams_detected": d["seams"]["detected"], "seam_z": d["seams"]["z"],
                                 "dice": d["dice"]} for d in report["diagnoses"]})
        print(f"run {k}: {seconds[-1]:.1f} s  " + "  ".join(
            f"{name}: {v['verdict']}, TM_abs {v['tm_abs']:.2g}, seams detected {v['seams_detected']} "
            f"(z {v['seam_z']:.1f}), Dice {v['dice']:.3f}" for name, v in runs[-1].items()))
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / f"run{args.repeats - 1}" / "report" / "figures" / "crops.png", args.figure)
    result = {"median_seconds": statistics.median(seconds), "seconds": seconds, "conditions": conditions,
              "runs": runs}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
