"""The seam test (`seamfree seams`) on its calibration and validation sets: sensitivity and false-alarm rate.

    python benchmarks/seam_calibration.py [--set calibration|validation|both] [--iterations 300] [--work DIR]

Trains each set's models once (into --work, reused by a rerun), predicts every case, runs `find_seams` on the
prediction alone (no grid given) and prints per case what it said, then the rates with exact 95 % intervals.
The sets are defined in `seamfree.study.seam_cases`; the validation set shares no model, image or core with the
calibration set. Writes benchmarks/results/seam_calibration.json. Needs SEAMFREE_DATA for the real frames.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from seamfree.study.seam_cases import CALIBRATION, VALIDATION, check_disjoint, run_cases, summarize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["calibration", "validation", "both"], default="both")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("seam-calibration-work"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "seam_calibration.json")
    args = parser.parse_args()
    check_disjoint()
    sets = {"calibration": CALIBRATION, "validation": VALIDATION}
    chosen = list(sets) if args.set == "both" else [args.set]
    report: dict[str, object] = {"machine": platform.platform(), "iterations": args.iterations,
                                 "date": time.strftime("%Y-%m-%d")}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in chosen:
        clock = time.perf_counter()
        results = []
        for result in run_cases(sets[name], args.work, iterations=args.iterations):
            results.append(result)
            print(json.dumps(result.to_dict()), flush=True)  # one line per case: a cut run still says what it saw
        summary = summarize(results)
        print(f"{name}: {json.dumps(summary)} ({time.perf_counter() - clock:.0f} s)", flush=True)
        report[name] = {"summary": summary, "cases": [r.to_dict() for r in results],
                        "seconds": time.perf_counter() - clock}
    for name in sets:
        if name not in report and name in previous:
            report[name] = previous[name]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
