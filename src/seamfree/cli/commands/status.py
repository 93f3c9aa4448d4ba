"""``seamfree status OUT [--json]``: how far a prediction into OUT is, per share of a job array."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

# shares listed one per line by the text report (all of them in --json)
LISTED = 20


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``status`` to the command's subparsers."""
    p = subparsers.add_parser("status", help="progress of a prediction (a job array's shares): done, running, "
                                             "paused, complete, throughput, ETA")
    p.add_argument("out", type=Path, help="the output of seamfree predict (.zarr)")
    p.add_argument("--json", action="store_true", help="one JSON object (every share) instead of text")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seamfree.io.progress import output_status

    status = output_status(args.out)
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(_text(status))
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _text(status: dict[str, Any]) -> str:
    total, done = status.get("units_total"), status.get("units_done") or 0
    share = f" ({100 * done / total:.0f} %)" if total else ""
    lines = [f"{status['output']}: {status['state']}; {done} of {total if total is not None else '?'} units "
             f"done{share}"]
    shards = status.get("shards") or []
    if status.get("shards_total"):
        counts: dict[str, int] = {}
        for shard in shards:
            counts[shard["state"]] = counts.get(shard["state"], 0) + 1
        lines.append(f"shares: {status['shards_total']} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                     + ")")
    rate = status.get("units_per_second")
    if rate and not status.get("complete"):
        lines.append(f"throughput: {rate:.3g} units/s; ETA {_duration(status.get('eta_seconds'))}")
    elif status.get("complete") and status.get("started"):
        lines.append(f"ran from {status['started']} to {status['finished']}"
                     + (f" ({rate:.3g} units/s)" if rate else ""))
    writer = status.get("writer")
    if writer:
        lines.append(f"written now by process {writer.get('pid')} on {writer.get('host')}"
                     + (f", job {writer['job']}" if writer.get("job") else ""))
    listed = [s for s in shards if s["state"] != "done"][:LISTED]
    for shard in listed:
        where = f" on {shard['host']}" if shard.get("host") else ""
        job = f", job {shard['job']}" if shard.get("job") else ""
        lines.append(f"  shard {shard['shard']}/{status['shards_total']}: {shard['state']}, "
                     f"{shard.get('units_done', 0)} of {shard.get('units')} units{where}{job}")
    hidden = sum(s["state"] != "done" for s in shards) - len(listed)
    if hidden > 0:
        lines.append(f"  ... and {hidden} more (seamfree status --json lists every share)")
    if not status.get("complete") and status["state"] in ("paused", "shards done"):
        lines.append("rerun the tasks that did not finish (the same command) to resume; the last to finish "
                     "completes the output")
    return "\n".join(lines)
