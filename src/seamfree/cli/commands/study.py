"""``seamfree study``: the paper's trade-off on real data, a CSV and a results page."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``study`` to the command's subparsers."""
    s = subparsers.add_parser("study", help="reproduce the paper's trade-off on real data: norms x batch sizes x "
                            "datasets, ViT, 3D, transfer; a CSV and a results page")
    s.add_argument("config", type=Path, nargs="?", help="YAML changing the profile (see examples/study.yaml)")
    s.add_argument("--profile", default="quick", help="quick (minutes), standard (the grid ~1.5 h per seed on "
                   "2 CPU cores, the transfer ~10 h: run it in pieces with --only) or full (paper-scale; use a GPU)")
    s.add_argument("--out", type=Path, default=Path("seamfree-study"), help="output folder; rerun to resume")
    s.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only runs whose name matches (and the runs they start from), e.g. 'grid/isbi2012/*'")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. grid.batch_sizes=[1,8]")
    s.add_argument("--results", type=Path, help="results page to write (default: OUT/results.md)")
    s.add_argument("--list", action="store_true", help="list the runs and which are done; run nothing")
    s.add_argument("--report-only", action="store_true",
                   help="write the table and the results page from the runs already done; run nothing")
    s.add_argument("--estimate", action="store_true",
                   help="print how long the runs still to do should take on this device (training timed here) and "
                        "the disk their models need; run nothing (printed before every study that runs)")
    s.add_argument("--device", help="cpu or cuda")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.study import describe_hardware, load_study_config, plan_runs, run_directories, run_study
    from seamfree.study.results import write_results
    from seamfree.study.runner import select_runs

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    if args.threads:
        overrides.append(f"threads={args.threads}")
    config = load_study_config(args.config, profile=args.profile, overrides=overrides)
    if args.list:
        directories = run_directories(config, args.out)
        for run in plan_runs(config):
            state = "done" if (directories[run.name] / "result.json").exists() else "to do"
            print(f"{state:6s} {run.name}")
        return 0
    if not args.report_only:
        from seamfree.study.estimate import estimate_study
        from seamfree.study.runner import model_directories, pending_runs

        pending = pending_runs(config, args.out, only=args.only)
        if pending:
            trained = {name for name, folder in model_directories(config, args.out).items()
                       if (folder / "model.pt").exists()}
            print(f"estimate: {estimate_study(config, pending, trained=trained).describe()}", flush=True)
        if args.estimate:
            return 0
    # per-tile and per-step messages of the library would bury the study's progress; restored afterwards
    quieted = {name: logging.getLogger(name) for name in ("seamfree.tiling", "seamfree.diagnostics",
                                                         "seamfree.training")}
    levels = {name: logger.level for name, logger in quieted.items()}
    for logger in quieted.values():
        logger.setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        result = run_study(config, args.out, only=args.only, dry_run=args.report_only)
    finally:
        for name, logger in quieted.items():
            logger.setLevel(levels[name])
    results = args.results or args.out / "results.md"
    # the page is of the runs selected (and the command regenerating it says which, and with what settings)
    selected = {run.name for run in select_runs(plan_runs(config), args.only)}
    options = [*(f"--set {shlex.quote(item)}" for item in args.set or []),
               *(f"--only {shlex.quote(pattern)}" for pattern in args.only or []),
               *([f"--device {args.device}"] if args.device else [])]
    command = " ".join([f"seamfree study {f'{args.config} ' if args.config else ''}--profile {config.profile} "
                        f"--out {args.out}", *options, f"--results {results}"])
    page = write_results([row for row in result.rows if row["name"] in selected], results,
                         run_dirs=run_directories(config, args.out), command=command, profile=config.profile,
                         hardware=describe_hardware(config.device), transfer=config.transfer)
    done = sum(row["status"] == "done" for row in result.rows)
    print(f"\n{len(result.ran)} run(s) trained and measured, {len(result.cached)} from the cache, "
          f"{len(result.failed)} failed; {done} of {len(result.rows)} runs of profile {config.profile} done")
    print(f"table:   {result.table}\nresults: {page}")
    if result.failed:
        print("failed runs (their errors are in the table; rerun the command to retry them): "
              + ", ".join(result.failed), file=sys.stderr)
        return 1
    return 0
