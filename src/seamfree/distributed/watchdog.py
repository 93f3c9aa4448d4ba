"""A watchdog for the dask driver: a scheduler left without workers would otherwise keep the run waiting forever."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from seamfree.errors import DataError

__all__ = ["WorkerWatchdog"]

logger = logging.getLogger(__name__)


def _worker_count(dask_scheduler: Any) -> int:
    """Runs on the scheduler: how many workers it has now."""
    return len(dask_scheduler.workers)


class WorkerWatchdog:
    """Cancels the run when the scheduler has had no worker for ``timeout`` seconds (the workers died, or none
    were started): the driver would otherwise wait for them forever."""

    def __init__(self, client: Any, timeout: float) -> None:
        self.client, self.timeout = client, timeout
        self.tripped: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="seamfree-worker-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        alone_since: float | None = None
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            try:  # asked of the scheduler itself: the client's cached view can lag behind
                workers = int(self.client.run_on_scheduler(_worker_count))
            except Exception as exc:  # the client is closing: nothing to watch
                logger.debug("worker watchdog stops: %s", exc)
                return
            now = time.monotonic()
            alone_since = None if workers else (alone_since or now)
            if alone_since is not None and now - alone_since >= self.timeout:
                self.tripped = now - alone_since
                try:
                    from distributed import Future

                    # the client keeps states, not futures: a future per waiting key is what cancel takes
                    self.client.cancel([Future(key, self.client) for key in list(self.client.futures)], force=True)
                except Exception:
                    logger.exception("could not cancel the waiting tasks")
                return

    def stop(self) -> None:
        self._stop.set()

    def raise_if_tripped(self, cause: Exception) -> None:
        if self.tripped is not None:
            raise DataError(
                f"no dask worker has been connected to the scheduler {self.client.scheduler.address} for "
                f"{self.tripped:.0f} s while tasks were waiting: its workers died or none were started; start "
                "workers (dask worker ADDRESS) and rerun the same command to resume (worker_timeout, "
                "CLI --worker-timeout, sets how long to wait)") from cause
