"""Where the work runs: the cluster's options, a LocalCluster started for the run, or a scheduler reached by
address (with a deadline on the handshake, and one seamfree version on every worker)."""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any

from seamfree.allocator import allocator_environment
from seamfree.errors import ConfigError, DataError, require

__all__ = ["JOBQUEUES", "ClusterConfig", "connect", "start_jobqueue_cluster", "start_local_cluster"]

# dask-jobqueue's cluster class of each batch system (--cluster)
JOBQUEUES = {"slurm": "SLURMCluster", "lsf": "LSFCluster", "pbs": "PBSCluster", "sge": "SGECluster"}
_MEMORY = re.compile(r"\d+(\.\d+)?\s*([kKMGTP]i?B|[kKMGTP]|B)?")
_ADDRESS = re.compile(r"([a-z]+://)?[\w.\-\[\]:]+:\d+")

@dataclass(frozen=True)
class ClusterConfig:
    """Where and how to run.

    Attributes
    ----------
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``; any deployment: dask-jobqueue,
        dask-kubernetes, manual). None starts a LocalCluster (or the ``jobqueue`` cluster).
    scheduler_file : str, optional
        The scheduler file of a scheduler started by the user (``dask-mpi``, ``dask_jobqueue.slurm.SLURMRunner``,
        ``dask scheduler --scheduler-file``).
    jobqueue : {"slurm", "lsf", "pbs", "sge"}, optional
        Start the workers as batch jobs through dask-jobqueue (``SLURMCluster`` ...): ``jobs`` jobs, each with
        ``workers`` worker processes of ``threads_per_worker`` threads, ``job_memory`` in all, ``walltime``,
        ``queue`` (partition), ``account``, and the network ``interface`` the workers listen on (e.g. ``ib0``).
        Jobs wait in the queue: ``worker_timeout`` bounds how long the run waits for the first worker.
    workers : int
        LocalCluster worker processes (with ``jobqueue``: per job).
    threads_per_worker : int
        Torch threads per worker (and dask threads; one task runs per thread).
    memory_limit : str or int
        LocalCluster memory limit per worker ("auto", "1GiB", bytes).
    tiles_per_task : int
        Tiles (= output chunks) per task: more amortizes scheduling, fewer spreads work and loses less on failure.
    timeout : float
        Seconds to wait for the scheduler.
    worker_timeout : float
        Seconds the scheduler may be without any worker while tasks wait, before the run stops with an error
        (the workers died, or none were started); a rerun resumes.
    tune_allocator : bool
        Spawn LocalCluster workers with seamfree's glibc settings (:mod:`seamfree.allocator`): faster
        3D forward passes, but a worker then keeps its high-water mark of memory, which dask counts as unmanaged
        memory. Give such workers room: at 1 GiB per worker, dask paused them (80 % of the limit) and the run
        stalled. Off by default; for other deployments set :data:`~seamfree.allocator.ALLOCATOR_ENVIRONMENT`
        in the workers' environment.
    """

    scheduler: str | None = None
    scheduler_file: str | None = None
    jobqueue: str | None = None
    jobs: int = 1
    job_memory: str = "4GB"
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    interface: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    tiles_per_task: int = 4
    timeout: float = 30.0
    tune_allocator: bool = False
    worker_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.worker_timeout > 0:
            raise ConfigError(f"worker_timeout (CLI --worker-timeout) must be a positive number of seconds, got "
                              f"{self.worker_timeout}")
        if self.workers < 1 or self.threads_per_worker < 1 or self.tiles_per_task < 1:
            raise ConfigError(f"workers, threads_per_worker and tiles_per_task must be >= 1, got {self.workers}, "
                              f"{self.threads_per_worker}, {self.tiles_per_task}")
        if isinstance(self.memory_limit, str) and self.memory_limit != "auto" and not _MEMORY.fullmatch(
                self.memory_limit.strip()):
            raise ConfigError(f"memory_limit (CLI --memory-limit) must be 'auto', bytes or a size like '2GiB' or "
                              f"'1.5 GB', got {self.memory_limit!r}")
        if self.jobqueue is not None and self.jobqueue not in JOBQUEUES:
            raise ConfigError(f"cluster (CLI --cluster) must be one of {', '.join(JOBQUEUES)} (or leave it out for a "
                              f"LocalCluster), got {self.jobqueue!r}")
        if self.jobs < 1:
            raise ConfigError(f"jobs (CLI --jobs) must be at least 1, got {self.jobs}")
        if sum(x is not None for x in (self.scheduler, self.scheduler_file, self.jobqueue)) > 1:
            raise ConfigError("give one of scheduler (--scheduler), scheduler_file (--scheduler-file) and jobqueue "
                              "(--cluster), not several")
        if self.scheduler is not None and not _ADDRESS.fullmatch(self.scheduler):
            raise ConfigError(f"scheduler (CLI --scheduler) must be an address like tcp://host:8786, got "
                              f"{self.scheduler!r}")


def start_local_cluster(cluster: ClusterConfig) -> Any:
    """Start the LocalCluster ``cluster`` describes (worker processes, threads, memory limit).

    With ``cluster.tune_allocator``, workers are spawned with
    :func:`~seamfree.allocator.allocator_environment` (glibc reads it at process start), replacing dask's
    own default, which trims everything above 64 KiB and makes every tile fault its memory back in.
    """
    require("distributed", "dask")
    import dask

    from distributed import LocalCluster

    tuned = allocator_environment() if cluster.tune_allocator else {}
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **tuned}
    # the nanny takes a variable from this process's os.environ before dask's configuration, writes it there
    # before each spawn and leaves it there (distributed 2026.8): set ours, then restore the environment, or a
    # later cluster and every later subprocess would inherit them
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(tuned)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return LocalCluster(n_workers=cluster.workers, threads_per_worker=cluster.threads_per_worker,
                                memory_limit=cluster.memory_limit, processes=True,
                                dashboard_address=":0")  # a free port: never collide with a running cluster
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_jobqueue_cluster(cluster: ClusterConfig) -> Any:
    """Start the dask-jobqueue cluster ``cluster`` describes and ask for its ``jobs`` (they may wait in the
    queue); the workers run this Python (the same environment and seamfree)."""
    module = require("dask_jobqueue", "hpc")
    assert cluster.jobqueue is not None
    kind = getattr(module, JOBQUEUES[cluster.jobqueue])
    options: dict[str, Any] = {
        "cores": cluster.workers * cluster.threads_per_worker, "processes": cluster.workers,
        "memory": cluster.job_memory, "python": sys.executable, "scheduler_options": {"dashboard_address": ":0"}}
    for name in ("walltime", "queue", "account", "interface"):
        if getattr(cluster, name) is not None:
            options[name] = getattr(cluster, name)
    jobs = kind(**options)
    jobs.scale(jobs=cluster.jobs)
    return jobs


def connect(cluster: ClusterConfig) -> tuple[Any, Any]:
    """A client of the cluster ``cluster`` describes, and the cluster started for it (None: one that was running)."""
    require("distributed", "dask")
    from distributed import Client

    if cluster.jobqueue is not None:
        jobs = start_jobqueue_cluster(cluster)
        return Client(jobs), jobs
    if cluster.scheduler is None and cluster.scheduler_file is None:
        local = start_local_cluster(cluster)
        return Client(local), local
    where = cluster.scheduler or f"the scheduler file {cluster.scheduler_file!r}"
    # Client's own timeout covers the TCP connect, not a peer that accepts and never answers the handshake: the
    # connection is made in a thread given a deadline, so that nothing waits without a word
    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            if cluster.scheduler_file is not None:
                box["client"] = Client(scheduler_file=cluster.scheduler_file, timeout=cluster.timeout)
            else:
                box["client"] = Client(cluster.scheduler, timeout=cluster.timeout)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=connect, name="seamfree-connect", daemon=True)
    thread.start()
    thread.join(cluster.timeout + 2.0)
    if thread.is_alive():
        raise DataError(f"the dask scheduler at {where!r} accepted the connection but did not answer "
                        f"within {cluster.timeout:.0f} s (--timeout): it is not a dask scheduler, or it is "
                        "overloaded; check the address (the scheduler prints it at start), or raise --timeout")
    error = box.get("error")
    if isinstance(error, OSError | TimeoutError):
        raise DataError(f"could not reach the dask scheduler at {where!r} within {cluster.timeout:.0f} s "
                        f"({error}); check the address and that the scheduler is running") from error
    if error is not None:
        raise error
    client = box["client"]
    try:
        _check_worker_versions(client, where)
    except BaseException:
        client.close()
        raise
    return client, None


def _worker_version() -> str:
    from seamfree._version import __version__ as version

    return str(version)


def _check_worker_versions(client: Any, address: str) -> None:
    """DataError when a worker of the cluster runs another seamfree version (its tiles might differ in the last
    bit, or its tasks fail in ways that say nothing): one version on every worker, said by address."""
    from seamfree._version import __version__ as version

    try:
        seen = client.run(_worker_version)
    except Exception as exc:
        raise DataError(f"the workers of the dask scheduler at {address!r} cannot run seamfree ({exc}); install "
                        f"seamfree {version} in the workers' environment") from exc
    other = {worker: v for worker, v in seen.items() if v != version}
    if other:
        shown = ", ".join(f"{w} has {v}" for w, v in list(other.items())[:3])
        raise DataError(f"{len(other)} worker(s) of the dask scheduler at {address!r} run another seamfree version "
                        f"than this {version} ({shown}); install the same version on every worker and the driver")
