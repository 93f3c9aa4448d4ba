"""Progress of a sharded output, as files beside it: what ``seamfree status`` reads.

While a sharded prediction runs, its marker folder (``NAME.zarr.seamfree``) holds ``shards/N/plan.json`` (the
shares' bounds, written once by the task that planned them) and one small record per share,
``shards/N/I.json``, rewritten atomically by the task running it (at most every :data:`RECORD_EVERY_S` seconds,
and when it stops): units done, state (running, paused, done, failed), host, process, job, start and last
update. The records of 10,000 shares are ~3 MB. Whether a share runs is not taken from its record (a killed task
cannot say it stopped) but from its lock, ``NAME.zarr.seamfree.shard-I-of-N.lock``, whose heartbeat and holder
say whether it lives. A complete output keeps a summary in its attributes (``seamfree.run``), so that ``status``
answers for it too after the markers are gone.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seamfree.errors import DataError
from seamfree.io.lock import lock_path, lock_state
from seamfree.io.markers import MARKER_DIR, atomic_write_text
from seamfree.io.zarr_output import seamfree_attrs

__all__ = [
    "RECORD_EVERY_S",
    "ShardProgress",
    "current_count",
    "output_status",
    "shard_lock_part",
    "shards_folder",
    "share_records",
]

RECORD_EVERY_S = 2.0


def shard_lock_part(index: int, count: int) -> str:
    """The lock part of share ``index`` of ``count`` (see :func:`seamfree.io.lock.lock_path`)."""
    return f"shard-{index}-of-{count}"


def shards_folder(output: str | os.PathLike[str], count: int) -> Path:
    """Where the plan and records of ``count`` shares of ``output`` live."""
    path = Path(output)
    return path.with_name(path.name + MARKER_DIR) / "shards" / str(count)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class ShardProgress:
    """The record of one share, kept by the task running it (see the module's description)."""

    output: str | os.PathLike[str]
    index: int
    count: int
    units: int
    done: int = 0
    state: str = "running"
    started: float = field(default_factory=time.time)
    done_at_start: int = 0
    _written: float = 0.0

    @property
    def path(self) -> Path:
        return shards_folder(self.output, self.count) / f"{self.index}.json"

    def update(self, done: int, state: str = "running", *, force: bool = False) -> None:
        """Record ``done`` units (at most every :data:`RECORD_EVERY_S` s unless ``force`` or the state changes)."""
        changed = state != self.state
        self.done, self.state = done, state
        now = time.time()
        if force or changed or now - self._written >= RECORD_EVERY_S:
            self._written = now
            job = os.environ.get("SLURM_JOB_ID")
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            record = {"shard": self.index, "count": self.count, "units": self.units, "done": self.done,
                      "done_at_start": self.done_at_start, "state": self.state, "host": socket.gethostname(),
                      "pid": os.getpid(), "job": f"{job}_{task}" if job and task else job,
                      "started": self.started, "updated": now}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(record))

    def start(self, done: int) -> None:
        self.done_at_start = done
        self.update(done, "running", force=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _current_count(markers: Path) -> int | None:
    value = _read_json(markers / "shards" / "current.json")
    count = (value or {}).get("count")
    return count if isinstance(count, int) and count > 0 else None


def current_count(output: str | os.PathLike[str]) -> int | None:
    """The number of shares the tasks writing ``output`` now use (None: not a sharded run)."""
    return _current_count(shards_folder(output, 1).parent.parent)


def share_records(output: str | os.PathLike[str], count: int) -> list[dict[str, Any] | None]:
    """The record of every share of ``count`` (None: none yet, or unreadable)."""
    folder = shards_folder(output, count)
    return [_read_json(folder / f"{index}.json") for index in range(count)]


def output_status(output: str | os.PathLike[str]) -> dict[str, Any]:
    """What a sharded (or a single-process) prediction into ``output`` has done: per share its state (``done``,
    ``running``, ``paused``, ``pending``; with host and job), units done and total, ``complete``, the throughput
    of the shares running now and an ETA. DataError when ``output`` is no seamfree output."""
    path = Path(output)
    markers = path.with_name(path.name + MARKER_DIR)
    mark = seamfree_attrs(path) if path.is_dir() else None
    fingerprint = _read_json(markers / "fingerprint.json")
    if mark is None and fingerprint is None:
        raise DataError(f"{str(path)!r} is not a seamfree output (no seamfree attributes, no progress beside it); "
                        "give the output path of a seamfree predict run")
    if mark is not None and mark.get("status") == "complete" and not markers.exists():
        return _complete(path, mark)
    count = _current_count(markers)
    if count is None:
        return _unsharded(path, markers, fingerprint)
    return _sharded(path, markers, count)


def _complete(path: Path, mark: dict[str, Any]) -> dict[str, Any]:
    found = mark.get("run")
    run: dict[str, Any] = found if isinstance(found, dict) else {}
    units = run.get("units", _units(mark.get("fingerprint")))  # a single process's output records no run
    count = run.get("shards")
    shards = ([{"shard": i, "state": "done"} for i in range(count)]
              if isinstance(count, int) and count <= 100_000 else [])
    return {"output": str(path), "complete": True, "state": "complete", "shards_total": count, "shards": shards,
            "units_total": units, "units_done": units, "units_per_second": run.get("units_per_second"),
            "eta_seconds": 0.0, "started": run.get("started"), "finished": run.get("finished")}


def _unsharded(path: Path, markers: Path, fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    done_folder = markers / "done"
    done = sum(1 for _ in done_folder.iterdir()) if done_folder.is_dir() else 0
    total = _units(fingerprint)
    lock = lock_state(lock_path(path))
    running = lock is not None and lock.held
    holder = (lock.holder or {}) if lock is not None else {}
    return {"output": str(path), "complete": False, "state": "running" if running else "paused",
            "shards_total": None, "shards": [], "units_total": total, "units_done": done,
            "writer": {"host": holder.get("host"), "job": holder.get("job"), "pid": holder.get("pid")}
            if running else None, "units_per_second": None, "eta_seconds": None}


def _units(fingerprint: dict[str, Any] | None) -> int | None:
    """Tiles of the plan a fingerprint records (crop stitching: one unit per core)."""
    try:
        shape = fingerprint["input"]["shape"][1:]  # type: ignore[index]
        core = fingerprint["grid"]["core"]  # type: ignore[index]
        return math.prod(-(-int(n) // int(c)) for n, c in zip(shape, core))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _sharded(path: Path, markers: Path, count: int) -> dict[str, Any]:
    folder = markers / "shards" / str(count)
    plan = _read_json(folder / "plan.json") or {}
    bounds = plan.get("bounds") if isinstance(plan.get("bounds"), list) else None
    finalizing = lock_state(lock_path(path))
    shards, rate, now = [], 0.0, time.time()
    for index in range(count):
        record = _read_json(folder / f"{index}.json") or {}
        units = (bounds[index + 1] - bounds[index]) if bounds else record.get("units")
        lock = lock_state(lock_path(path, shard_lock_part(index, count)))
        done = int(record.get("done", 0))
        host: Any
        job: Any
        if lock is not None and lock.held:
            state = "running"
            holder = lock.holder or {}
            host, job = holder.get("host"), holder.get("job")
            seconds = now - float(record.get("started", now))
            if seconds > 0 and record.get("state") == "running":
                rate += max(0, done - int(record.get("done_at_start", 0))) / seconds
        else:
            state = record.get("state", "pending") if record else "pending"
            if state in ("running", "failed"):
                state = "paused"  # its task stopped without a word (killed): a rerun resumes it
            host, job = record.get("host"), record.get("job")
        shards.append({"shard": index, "state": state, "units": units, "units_done": done, "host": host,
                       "job": job, "updated": record.get("updated")})
    total = int(bounds[-1]) if bounds else sum(int(s["units"] or 0) for s in shards)
    done_units = sum(int(s["units_done"]) for s in shards)
    states = {s["state"] for s in shards}
    finishing = finalizing is not None and finalizing.held and (finalizing.holder or {}).get("role") == "finalize"
    state = ("finalizing" if finishing else "running" if "running" in states
             else "shards done" if states == {"done"} else "paused")
    remaining = max(0, total - done_units)
    return {"output": str(path), "complete": False, "state": state, "shards_total": count, "shards": shards,
            "units_total": total, "units_done": done_units, "units_per_second": rate or None,
            "eta_seconds": (remaining / rate) if rate > 0 else None}
