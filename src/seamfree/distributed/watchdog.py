"""A watchdog for the dask driver: a scheduler left without workers would otherwise keep the run waiting forever.

It runs in the driver's own thread, between polls for finished tasks: a second thread making synchronous client
calls beside the driver's once left a CI run waiting for ever, so nothing here runs concurrently with the driver.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from seamfree.errors import DataError

__all__ = ["WorkerWatchdog", "completed"]

# How often the driver looks for finished tasks while none has finished (seconds).
POLL_SECONDS = 0.05


def _worker_count(dask_scheduler: Any) -> int:
    """Runs on the scheduler: how many workers it has now."""
    return len(dask_scheduler.workers)


class WorkerWatchdog:
    """Stops the run with a clear error when the scheduler has had no worker for ``timeout`` seconds (the workers
    died, or none were started): the driver would otherwise wait for them forever."""

    def __init__(self, client: Any, timeout: float) -> None:
        self.client, self.timeout = client, timeout
        self.interval = min(1.0, timeout / 4)
        self._next = time.monotonic()
        self._alone_since: float | None = None

    def check(self) -> None:
        """Ask the scheduler (its own count: the client's cached view can lag behind) at most once per interval."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            workers = int(self.client.run_on_scheduler(_worker_count))
        except (OSError, TimeoutError) as exc:
            raise DataError(f"lost contact with the dask scheduler {self.client.scheduler.address} ({exc}); "
                            "restart it and its workers, then rerun the same command to resume") from exc
        self._alone_since = None if workers else (self._alone_since or now)
        if self._alone_since is not None and now - self._alone_since >= self.timeout:
            raise DataError(
                f"no dask worker has been connected to the scheduler {self.client.scheduler.address} for "
                f"{now - self._alone_since:.0f} s while tasks were waiting: its workers died or none were started; "
                "start workers (dask worker ADDRESS) and rerun the same command to resume (worker_timeout, "
                "CLI --worker-timeout, sets how long to wait)")


def completed(running: Any, watchdog: WorkerWatchdog) -> Iterator[tuple[Any, Any]]:
    """``(future, result)`` of a ``distributed.as_completed(..., with_results=True)`` as tasks finish, raising a
    task's error, with the watchdog consulted while none finishes. Futures may be added to ``running`` between
    items."""
    while not running.is_empty():
        batch = running.next_batch(block=False)
        if not batch:
            watchdog.check()
            time.sleep(POLL_SECONDS)
            continue
        for future, result in batch:
            if future.status == "error":  # with_results gives (type, exception, traceback) for a failed task
                _, exc, traceback = result
                raise exc.with_traceback(traceback)
            yield future, result


def gathered(client: Any, futures: list[Any], watchdog: WorkerWatchdog) -> list[Any]:
    """The results of ``futures`` in their order, the watchdog consulted while waiting."""
    from distributed import wait

    while True:
        try:
            wait(futures, timeout=watchdog.interval)
            break
        except TimeoutError:
            watchdog.check()
    return [future.result() for future in futures]
