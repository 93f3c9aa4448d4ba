"""Job arrays on a real one-node SLURM (Debian's slurm-wlm and munge, started by scripts/slurm-up, which
scripts/setup runs): shares equal one process, a task stopped by SIGTERM (a preemption) or warned before its
walltime (USR1: paused and requeued) resumes to the same output, a stale lock of a job SLURM no longer runs is
taken over, two tasks of one share never both write, and ``seamfree status`` is right while a task runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seamfree.io.lock import lock_path
from seamfree.io.progress import output_status, shard_lock_part
from seamfree.models import UNet, save_model
from seamfree.testing import randomize_norm_statistics

zarr = pytest.importorskip("zarr")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEAMFREE = str(Path(sys.executable).parent / "seamfree")


def _sinfo_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return bool(re.search(r"idle|mixed|alloc", result.stdout))


@pytest.fixture(scope="module")
def slurm():
    """A running one-node SLURM (started here with scripts/slurm-up when none answers)."""
    if not _sinfo_ready():
        started = subprocess.run([str(ROOT / "scripts" / "slurm-up")], capture_output=True, text=True, check=False)
        if started.returncode != 0 or not _sinfo_ready():
            pytest.fail(f"no SLURM here and scripts/slurm-up could not start one: {started.stderr.strip()} (run "
                        "scripts/setup as root)")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A model file, an input, and the output of one process (the reference)."""
    folder = tmp_path_factory.mktemp("slurm")
    os.chmod(folder, 0o755)
    torch.manual_seed(0)
    net = UNet(3, 1, 1, depth=2, features=4, norm="batch")
    randomize_norm_statistics(net)
    save_model(net.eval(), folder / "m.pt")
    image = np.random.default_rng(0).normal(size=(32, 320, 320)).astype(np.float32)
    array = zarr.create_array(str(folder / "in.zarr"), shape=image.shape, chunks=(32, 64, 64), dtype="f4")
    array[:] = image
    subprocess.run([SEAMFREE, *_arguments(folder, "ref.zarr")], check=True, capture_output=True,
                   env=_environment())
    return folder


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _arguments(folder: Path, out: str) -> list[str]:
    return ["predict", str(folder / "m.pt"), str(folder / "in.zarr"), str(folder / out), "--core", "16,64,64",
            "--tiles-per-batch", "1", "--intensity-offset", "0", "--intensity-scale", "1", "-q"]


def _assert_same(folder: Path, out: str) -> None:
    reference, found = zarr.open_group(str(folder / "ref.zarr"), mode="r"), zarr.open_group(str(folder / out),
                                                                                               mode="r")
    keys = sorted(reference.array_keys())
    assert keys == sorted(found.array_keys()) and len(keys) >= 2  # level 0 and the pyramid
    for key in keys:
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(reference[key]))


def _submit(folder: Path, out: str, tasks: int, *extra: str) -> str:
    result = subprocess.run([SEAMFREE, "submit", *_arguments(folder, out), "--tasks", str(tasks), *extra],
                            capture_output=True, text=True, cwd=folder, env=_environment(), check=False)
    assert result.returncode == 0, result.stderr
    found = re.search(r"submitted seamfree-predict: job (\d+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def _wait(job_id: str, limit: float = 300) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        listed = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, check=False)
        # ended: no longer listed, or already forgotten ("Invalid job id"); a controller too busy to answer (a
        # timeout on a loaded machine, seen in CI) is no answer, so keep asking
        if (listed.returncode == 0 and not listed.stdout.strip()) or "Invalid job id" in listed.stderr:
            return
        time.sleep(1)
    subprocess.run(["scancel", job_id], check=False)
    pytest.fail(f"SLURM job {job_id} did not end in {limit} s")


def _wait_until_running(out: Path, limit: float = 120) -> dict:
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            status = output_status(out)
        except Exception:
            status = None
        if status and status["shards"] and status["shards"][0]["state"] == "running" \
                and status["shards"][0]["units_done"] >= 2:
            return status
        time.sleep(0.1)
    pytest.fail(f"the task writing {out} never ran (status: {status})")


def _release_requeued(job_id: str, limit: float = 120) -> None:
    """Wait until the job is requeued, then start it now (SLURM holds a requeued job for two minutes)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        reason = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True, text=True,
                                check=False).stdout.strip()
        if reason == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)
    pytest.fail(f"SLURM job {job_id} was not requeued after the walltime's warning")


def _logs(folder: Path, out: str) -> str:
    return "".join(p.read_text() for p in sorted((folder / f"{out}.seamfree-jobs").glob("*.log")))


def _logs_holding(folder: Path, out: str, text: str, limit: float = 60) -> str:
    """The logs once they hold ``text`` (a job's last lines can reach the file after squeue stops listing it), or
    as they are after ``limit`` seconds."""
    deadline = time.time() + limit
    logs = _logs(folder, out)
    while text not in logs and time.time() < deadline:
        time.sleep(0.5)
        logs = _logs(folder, out)
    return logs


def test_a_job_array_equals_one_process(slurm, job):
    result = subprocess.run([SEAMFREE, "submit", *_arguments(job, "array.zarr"), "--tasks", "4", "--wait"],
                            capture_output=True, text=True, cwd=job, env=_environment(), check=False)
    assert result.returncode == 0, result.stderr
    assert "complete; " in result.stdout  # the status printed after --wait
    _assert_same(job, "array.zarr")
    status = json.loads(subprocess.run([SEAMFREE, "status", str(job / "array.zarr"), "--json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert status["complete"] is True and status["shards_total"] == 4
    assert status["units_done"] == status["units_total"] == 25
    logs = _logs(job, "array.zarr")
    assert len(re.findall(r"shard \d/4 of .*: \d+ of its \d+ tiles computed", logs)) == 4, logs


def test_preempted_and_walltime_warned_tasks_resume_to_the_same_output(slurm, job):
    out = job / "preempted.zarr"
    first = _submit(job, "preempted.zarr", 1)
    status = _wait_until_running(out)
    shard = status["shards"][0]
    assert shard["host"] == socket.gethostname() and shard["job"] == f"{first}_0"
    # a preemption: SLURM's SIGTERM to the batch shell and the task
    subprocess.run(["scancel", "--signal=TERM", "--full", first], check=True)
    _wait(first)
    logs = _logs(job, "preempted.zarr")
    assert re.search(r"shard 0/1 paused at \d+ % \(\d+ of 25 tiles\): rerun to resume", logs), logs
    paused = output_status(out)
    assert paused["state"] == "paused" and 0 < paused["units_done"] < 25 and not paused["complete"]
    # the walltime's warning (USR1 to the batch shell): paused, then requeued by the script, then done
    second = _submit(job, "preempted.zarr", 1)
    _wait_until_running(out)
    subprocess.run(["scancel", "--signal=USR1", "--batch", second], check=True)
    _release_requeued(second)
    _wait(second, 300)
    logs = _logs_holding(job, "preempted.zarr", "the output is complete")
    assert len(re.findall(r"paused at", logs)) == 2, logs
    assert "the output is complete" in logs, logs
    _assert_same(job, "preempted.zarr")


def test_the_lock_of_a_job_slurm_no_longer_runs_is_taken_over(slurm, job):
    out = job / "stale.zarr"
    subprocess.run([SEAMFREE, *_arguments(job, "stale.zarr"), "--shard", "0/2"], check=True, capture_output=True,
                   env=_environment())
    lock = lock_path(out, shard_lock_part(1, 2))
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "job": "999999_1", "role": "shard",
                                "started": "yesterday"}))
    old = time.time() - 30  # a heartbeat 30 s old: fresh, but SLURM does not run job 999999_1
    os.utime(lock, (old, old))
    job_id = _submit(job, "stale.zarr", 2)
    _wait(job_id)
    logs = _logs(job, "stale.zarr")
    assert "SLURM no longer runs its job 999999_1" in logs, logs
    _assert_same(job, "stale.zarr")


def test_two_tasks_of_one_share_never_both_write(slurm, job):
    script = job / "twice.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH --cpus-per-task=1\n"
                      f"#SBATCH --output={job}/twice_%a.log\n"
                      f"{SEAMFREE} {' '.join(_arguments(job, 'twice.zarr'))} --shard 0/1\n")
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True,
                            env=_environment()).stdout.strip()
    _wait(job_id)
    logs = [(job / f"twice_{i}.log").read_text() for i in (0, 1)]
    computed = [int(m.group(1)) for log in logs for m in re.finditer(r"(\d+) of its 25 tiles computed", log)]
    refused = sum("is being written by" in log for log in logs)
    assert sum(computed) == 25 and len(computed) + refused == 2, logs  # every tile computed exactly once
    _assert_same(job, "twice.zarr")


def test_dask_workers_as_slurm_jobs_equal_one_process(slurm, job):
    """dask-jobqueue's SLURMCluster: two batch jobs of one worker each, the same output as one process."""
    result = subprocess.run([SEAMFREE, *_arguments(job, "jobqueue.zarr"), "--cluster", "slurm", "--jobs", "2",
                             "--workers", "1", "--job-memory", "1GB", "--interface", "lo", "--walltime", "00:10:00"],
                            capture_output=True, text=True, cwd=job, env=_environment(), check=False, timeout=600)
    assert result.returncode == 0, result.stderr
    assert re.search(r"25 of 25 tiles in \d+ tasks on [12] workers", result.stdout), result.stdout
    _assert_same(job, "jobqueue.zarr")
    listed = subprocess.run(["squeue", "-h", "-n", "dask-worker"], capture_output=True, text=True, check=False)
    deadline = time.time() + 60
    while listed.stdout.strip() and time.time() < deadline:  # the jobs end with the run
        time.sleep(1)
        listed = subprocess.run(["squeue", "-h", "-n", "dask-worker"], capture_output=True, text=True, check=False)
    assert not listed.stdout.strip()


def test_a_segmentation_array_equals_one_process(slurm, job):
    arguments = [str(job / "ref.zarr"), str(job / "labels_array.zarr"), "--block", "16,64,64", "--threshold", "0.5"]
    result = subprocess.run([SEAMFREE, "submit", "segment", *arguments, "--tasks", "3", "--wait"],
                            capture_output=True, text=True, cwd=job, env=_environment(), check=False)
    assert result.returncode == 0, result.stderr
    subprocess.run([SEAMFREE, "segment", str(job / "ref.zarr"), str(job / "labels_one.zarr"), "--block", "16,64,64",
                    "--threshold", "0.5", "-q"], check=True, capture_output=True, env=_environment())
    one = zarr.open_group(str(job / "labels_one.zarr"), mode="r")
    array = zarr.open_group(str(job / "labels_array.zarr"), mode="r")
    for key in one.array_keys():
        np.testing.assert_array_equal(np.asarray(array[key]), np.asarray(one[key]))
    logs = _logs(job, "labels_array.zarr")
    assert logs.count("shares still to do") + logs.count("another task joins") == 2, logs
