"""One writer per output: an exclusive lock file beside the output, with stale-lock detection a cluster can live
with.

The lock is ``NAME.seamfree.lock`` next to the output path. It is written whole to a private temporary file and
then hard-linked to its name (``link`` fails when the name exists: atomic on local file systems and NFS), so a
lock is never empty or half-written, and a disk full at start leaves no lock at all. It holds the writer's host,
process id, SLURM job (and array task), start time, and a heartbeat: a thread touches the file every
:data:`HEARTBEAT_S` seconds while the writer runs.

A lock is stale, and taken over, when its writer certainly no longer writes: a process of this host that no
longer runs (or is a zombie); the same SLURM job on any host (a requeued or restarted job finds its own earlier
lock); or, from any host, a heartbeat older than ``$SEAMFREE_LOCK_STALE`` seconds (default 600; a killed node
stops touching its lock). A lock that cannot be read (written by an older seamfree, or damaged) counts by its
age alone. Otherwise the second writer stops with a message naming the first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seamfree.errors import OutputExistsError

__all__ = ["HEARTBEAT_S", "LOCK_SUFFIX", "lock_path", "output_lock", "stale_after"]

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".seamfree.lock"
HEARTBEAT_S = 30.0


def lock_path(output: str | os.PathLike[str]) -> Path:
    """Return the lock file of ``output``."""
    path = Path(output)
    return path.with_name(path.name + LOCK_SUFFIX)


def stale_after() -> float:
    """Seconds without a heartbeat after which a lock from any host is stale (``$SEAMFREE_LOCK_STALE``)."""
    try:
        value = float(os.environ.get("SEAMFREE_LOCK_STALE", "600"))
    except ValueError:
        return 600.0
    return value if value > 0 else 600.0


def _job() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return None if not job else f"{job}_{task}" if task else job


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal said it exists
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _try_create(path: Path, owner: dict[str, Any]) -> bool | None:
    """Create the lock with its content at once: True; held by someone: False; cannot be created here at all
    (no folder, no write permission, disk full): None, and the output itself fails with the message that says
    why."""
    temporary = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(owner))
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError:
        return None
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _holder(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    """The lock's content (None: unreadable) and its age in seconds (None: it vanished)."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None, None
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, age
    return (holder if isinstance(holder, dict) else None), age


def _pid(holder: dict[str, Any]) -> int | None:
    pid = holder.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def _stale(holder: dict[str, Any] | None, age: float, me: dict[str, Any]) -> str | None:
    """Why the lock is stale (None: it may be held)."""
    if age > stale_after():
        return f"no heartbeat for {age:.0f} s (limit {stale_after():.0f} s, SEAMFREE_LOCK_STALE)"
    if holder is None:
        return None
    if me["job"] is not None and holder.get("job") == me["job"]:
        return f"it was taken by this same SLURM job ({me['job']}) before a restart"
    pid = _pid(holder)
    if holder.get("host") == me["host"] and (pid is None or not _running(pid)):
        return f"process {holder.get('pid')!r} of this host no longer runs"
    return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (its lock cannot be read)"
    job = f", SLURM job {holder['job']}" if holder.get("job") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{job} since {holder.get('started')}"


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return


@contextmanager
def output_lock(output: Any) -> Iterator[Path | None]:
    """Hold the exclusive lock of the output path ``output`` for the duration of the block.

    Outputs that are not paths (None, arrays) need no lock. OutputExistsError if another live writer holds it.
    """
    if not isinstance(output, str | os.PathLike):
        yield None
        return
    path = lock_path(output)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "job": _job(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    created = _try_create(path, owner)
    if created is None:
        yield None
        return
    if not created:
        holder, age = _holder(path)
        reason = _stale(holder, age, owner) if age is not None else "it vanished"
        if reason is not None and _holder(path)[0] == holder:  # still the lock judged (another may have won)
            logger.warning("taking over the stale lock %s of %s: %s", path, _describe(holder), reason)
            path.unlink(missing_ok=True)
        if not (reason is not None and _try_create(path, owner)):
            raise OutputExistsError(
                f"output {str(output)!r} is being written by {_describe(holder)} (lock {str(path)!r}); wait for it "
                f"to finish: its lock is taken over by itself once {stale_after():.0f} s pass without its "
                "heartbeat, or delete the lock file if you know that process is gone, and rerun to resume")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), name="seamfree-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        beat.join()
        path.unlink(missing_ok=True)
