"""One writer per output: an exclusive lock file beside the output, with stale-lock detection.

The lock is ``NAME.seamfree.lock`` next to the output path, created with ``O_EXCL`` (atomic on local file
systems and on NFS v3+), holding the host, process id and start time of its writer. A lock left by a process of
this host that no longer runs is stale and taken over; a lock held by a live process, or by another host (whose
processes cannot be checked from here), makes the second writer stop with a message naming the first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seamfree.errors import OutputExistsError

__all__ = ["LOCK_SUFFIX", "lock_path", "output_lock"]

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".seamfree.lock"


def lock_path(output: str | os.PathLike[str]) -> Path:
    """Return the lock file of ``output``."""
    path = Path(output)
    return path.with_name(path.name + LOCK_SUFFIX)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _try_create(path: Path, owner: dict[str, Any]) -> bool | None:
    """Create the lock: True; held by someone: False; cannot be created here at all (no folder, no write
    permission): None, and the output itself will fail with the message that says why."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError:
        return None
    with os.fdopen(descriptor, "w") as file:
        json.dump(owner, file)
    return True


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # vanished meanwhile, or half-written by a writer that is starting right now


@contextmanager
def output_lock(output: Any) -> Iterator[Path | None]:
    """Hold the exclusive lock of the output path ``output`` for the duration of the block.

    Outputs that are not paths (None, arrays) need no lock. OutputExistsError if another live writer holds it.
    """
    if not isinstance(output, str | os.PathLike):
        yield None
        return
    path = lock_path(output)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    created = _try_create(path, owner)
    if created is None:
        yield None
        return
    if not created:
        holder = _holder(path)
        stale = holder is not None and holder.get("host") == owner["host"] and not _running(int(holder.get("pid", 0)))
        if stale and holder is not None:
            logger.info("removing the stale lock %s of process %s, which no longer runs", path, holder.get("pid"))
            path.unlink(missing_ok=True)
        if not (stale and _try_create(path, owner)):
            who = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}" if holder
                   else "another process")
            raise OutputExistsError(
                f"output {str(output)!r} is being written by {who} (lock {str(path)!r}); wait for it to finish, "
                "or, if that process is gone, delete the lock file and rerun to resume"
            )
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
