"""One writer per output: an exclusive lock file beside the output, with stale-lock detection a cluster can live
with.

The lock is ``NAME.seamfree.lock`` next to the output path. It is written whole to a private temporary file and
then hard-linked to its name (``link`` fails when the name exists: atomic on local file systems and NFS), so a
lock is never empty or half-written, and a disk full at start leaves no lock at all. It holds the writer's host,
process id, SLURM job (and array task), start time, and a heartbeat: a thread touches the file every
:data:`HEARTBEAT_S` seconds while the writer runs.

A lock is stale, and taken over, when its writer certainly no longer writes: a process of this host that no
longer runs (or is a zombie); the same SLURM job on any host (a requeued or restarted job finds its own earlier
lock); a lock of a SLURM job that squeue no longer lists as running, from any host; or, from any host, a
heartbeat older than ``$SEAMFREE_LOCK_STALE`` seconds (default 600; a killed node
stops touching its lock). An empty or unreadable lock (damaged, or written by another program) is stale after a
minute. Otherwise the second writer stops with a message naming the first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seamfree.errors import OutputExistsError

__all__ = ["HEARTBEAT_S", "LOCK_SUFFIX", "LockState", "lock_path", "lock_state", "output_lock", "stale_after"]

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".seamfree.lock"
HEARTBEAT_S = 30.0
JOB_GRACE_S = 10.0  # a lock younger than this is not judged by squeue (a job just started may not be listed yet)
UNREADABLE_STALE_S = 60.0  # an empty or unreadable lock older than this is stale
WAIT_S = 0.5  # between two tries of a lock held by a task that plans or completes a sharded output


def lock_path(output: str | os.PathLike[str], part: str | None = None) -> Path:
    """Return the lock file of ``output`` (``part``: of one part of it, e.g. ``"shard-3-of-16"``)."""
    path = Path(output)
    return path.with_name(path.name + (LOCK_SUFFIX if part is None else f".seamfree.{part}.lock"))


def stale_after() -> float:
    """Seconds without a heartbeat after which a lock from any host is stale (``$SEAMFREE_LOCK_STALE``)."""
    try:
        value = float(os.environ.get("SEAMFREE_LOCK_STALE", "600"))
    except ValueError:
        return 600.0
    return value if value > 0 else 600.0


def _job() -> str | None:
    """This process's SLURM job as squeue names it: ``ARRAYJOB_TASK`` for a task of an array, else the job id."""
    job = os.environ.get("SLURM_JOB_ID")
    array = os.environ.get("SLURM_ARRAY_JOB_ID") or job
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return None if not job else f"{array}_{task}" if task else job


_QUEUE: dict[str, Any] = {"at": -1e9, "jobs": None}
QUEUE_TTL_S = 20.0


def _scheduler_runs(job: str) -> bool | None:
    """Whether SLURM runs ``job`` now (running, completing or suspended); None when no SLURM answers here.
    One ``squeue`` call serves every lock judged within :data:`QUEUE_TTL_S` seconds."""
    if time.monotonic() - _QUEUE["at"] > QUEUE_TTL_S:
        _QUEUE["at"], _QUEUE["jobs"] = time.monotonic(), None
        if shutil.which("squeue"):
            try:
                result = subprocess.run(["squeue", "-h", "-r", "-t", "R,CG,S", "-o", "%i"], capture_output=True,
                                        text=True, timeout=10, check=False)
            except (OSError, subprocess.SubprocessError):
                result = None
            if result is not None and result.returncode == 0:
                _QUEUE["jobs"] = set(result.stdout.split())
    jobs = _QUEUE["jobs"]
    return None if jobs is None else job in jobs


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
    if holder is None:  # never one of ours (written whole, then linked): damaged, or from another program
        return f"it cannot be read and is {age:.0f} s old" if age > UNREADABLE_STALE_S else None
    if me["job"] is not None and holder.get("job") == me["job"]:
        return f"it was taken by this same SLURM job ({me['job']}) before a restart"
    pid = _pid(holder)
    if holder.get("host") == me["host"] and (pid is None or not _running(pid)):
        return f"process {holder.get('pid')!r} of this host no longer runs"
    job = holder.get("job")
    if isinstance(job, str) and job and age > JOB_GRACE_S and _scheduler_runs(job) is False:
        return f"SLURM no longer runs its job {job}"
    return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (its lock cannot be read)"
    job = f", SLURM job {holder['job']}" if holder.get("job") else ""
    role = {"plan": " (planning the shards)", "finalize": " (completing the output)"}.get(str(holder.get("role")), "")
    return f"process {holder.get('pid')} on {holder.get('host')}{job}{role} since {holder.get('started')}"


@dataclass(frozen=True)
class LockState:
    """What a lock file says now: its holder (None: unreadable), its age and why it is stale (None: held)."""

    holder: dict[str, Any] | None
    age: float
    stale: str | None

    @property
    def held(self) -> bool:
        return self.stale is None


def lock_state(path: Path) -> LockState | None:
    """The state of the lock file ``path`` as a process of this host judges it; None when there is no lock."""
    holder, age = _holder(path)
    if age is None:
        return None
    me = {"host": socket.gethostname(), "pid": os.getpid(), "job": None}
    return LockState(holder, age, _stale(holder, age, me))


def _acquire(path: Path, owner: dict[str, Any], output: Any) -> tuple[bool | None, dict[str, Any] | None]:
    """Take the lock (taking over a stale one): (True, None); held by a live writer: (False, holder); cannot be
    created here at all: (None, None)."""
    created = _try_create(path, owner)
    if created is None:
        return None, None
    if created:
        return True, None
    holder, age = _holder(path)
    reason = _stale(holder, age, owner) if age is not None else "it vanished"
    if reason is not None and _holder(path)[0] == holder:  # still the lock judged (another may have won)
        logger.warning("taking over the stale lock %s of %s: %s", path, _describe(holder), reason)
        path.unlink(missing_ok=True)
    if reason is not None and _try_create(path, owner):
        return True, None
    return False, holder


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return


@contextmanager
def output_lock(output: Any, *, part: str | None = None, role: str = "write",
                wait_for: tuple[str, ...] = ()) -> Iterator[Path | None]:
    """Hold the exclusive lock of the output path ``output`` (``part``: of one part of it) for the block.

    Outputs that are not paths (None, arrays) need no lock. OutputExistsError if another live writer holds it;
    a holder whose ``role`` is in ``wait_for`` (a task planning the shards, or completing the output: short or
    resumable work) is waited for instead, with a line every minute.
    """
    if not isinstance(output, str | os.PathLike):
        yield None
        return
    path = lock_path(output, part)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "job": _job(), "role": role,
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    waited, told = 0.0, 0.0
    while True:
        acquired, holder = _acquire(path, owner, output)
        if acquired is None:
            yield None
            return
        if acquired:
            break
        if holder is None or holder.get("role") not in wait_for:
            raise OutputExistsError(
                f"output {str(output)!r} is being written by {_describe(holder)} (lock {str(path)!r}); wait for "
                f"it to finish: its lock is taken over by itself once {stale_after():.0f} s pass without its "
                "heartbeat, or delete the lock file if you know that process is gone, and rerun to resume")
        if waited - told >= 60 or not told:
            logger.info("waiting for %s, which holds %s", _describe(holder), path)
            told = waited or 1e-9
        time.sleep(WAIT_S)
        waited += WAIT_S
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), name="seamfree-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        beat.join()
        path.unlink(missing_ok=True)
