"""One task of a job array: ``predict(..., shard=Shard(I, N))`` writes share ``I`` of ``N`` of the output.

No coordinator: every task plans, runs its share and, if it finds every share done, completes the output.

1. **Plan, once for all.** Under the output's lock (short; a task that finds it held by another task's planning
   or completion waits) the first task plans the prediction, creates the output and its fingerprint, and cuts
   the shares (:func:`~seamfree.tiling.shards.partition`). Every later task plans from what the output records:
   the same core, batch and halo, and the same intensity statistics (computed once, by the first task), so
   every task writes what one process would.
2. **Its share.** Still under the output's lock the task takes its share's lock (a second task of the same share
   is refused: two writers of one unit never run), then runs the tiles of its share that are not done, recording
   its progress (:class:`~seamfree.io.progress.ShardProgress`). A stop request (a signal before the walltime, a
   preemption) writes the batch in flight, records the share as paused and raises
   :class:`~seamfree.errors.Paused`: a rerun resumes it. A rerun of a finished share verifies and skips its tiles.
3. **Completion.** A task that finds every share done takes the output's lock, checks that no share's task still
   runs, writes the pyramid levels and the complete flag (:meth:`ZarrOutput.finalize`, resumable). If it dies,
   the next task to finish, or any rerun, completes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from seamfree.errors import ConfigError, OutputExistsError, Paused
from seamfree.io.lock import lock_path, lock_state, output_lock
from seamfree.io.markers import atomic_write_text
from seamfree.io.progress import ShardProgress, current_count, shard_lock_part, shards_folder, share_records
from seamfree.io.readers import ImageSource
from seamfree.io.writers import ZarrOutput, create_output, output_format, recorded_fingerprint
from seamfree.models.describe import ModelInfo
from seamfree.tiling.engine import run_tiles
from seamfree.tiling.normalize import IntensityNormalization, resolve_normalization
from seamfree.tiling.options import PredictConfig
from seamfree.tiling.plan import PredictionPlan, output_calibration, plan_prediction, zarr_options
from seamfree.tiling.shards import Shard, partition, shard_tiles
from seamfree.tiling.sinks import sink_for
from seamfree.tiling.stitching import stitching

__all__ = ["ShardReport", "check_shardable", "predict_shard", "running_shards"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardReport:
    """What one task did: its share, its tiles (computed now / all of the share), and whether it completed the
    output (``completed``) or left that to another task."""

    shard: Shard
    plan: PredictionPlan
    units: int
    computed: int
    seconds: float
    completed: bool


def check_shardable(output: Any, config: PredictConfig) -> None:
    """ConfigError unless a prediction with ``config`` into ``output`` can be split into shares."""
    if not isinstance(output, str) and not hasattr(output, "__fspath__"):
        raise ConfigError("--shard writes an output on storage every task shares: give an output path (.zarr), "
                          f"got a {type(output).__name__}")
    if output_format(output) != "zarr":
        raise ConfigError(f"--shard writes OME-Zarr (one file per unit, so tasks never share one): got "
                          f"{str(output)!r}; use a .zarr output")
    if not stitching(config.stitching).distributed:
        raise ConfigError(f"--shard uses crop stitching (each unit owned by one task), got stitching "
                          f"{config.stitching!r}: drop --stitching or predict in one process")
    if config.overwrite:
        raise ConfigError("--overwrite with --shard would let every task delete the others' work: remove the old "
                          "output once (seamfree predict ... --overwrite, or delete it) before starting the tasks")


def running_shards(output: Any) -> list[str]:
    """The shares of ``output`` whose tasks hold their lock now (``"3/16"``)."""
    current = current_count(output)
    if current is None:
        return []
    return [f"{i}/{current}" for i in range(current)
            if (state := lock_state(lock_path(output, shard_lock_part(i, current)))) is not None and state.held]


def _shared_normalization(recorded: dict[str, Any] | None, config: PredictConfig,
                          model: nn.Module) -> IntensityNormalization | None:
    """The statistics an earlier task recorded in the output, when they are those of this config's method."""
    wanted = resolve_normalization(config.normalization, model)
    if wanted.resolved or recorded is None:
        return None
    stored = recorded.get("normalization")
    if not isinstance(stored, dict) or stored.get("offset") is None or stored.get("scale") is None:
        return None
    if (stored.get("method"), stored.get("low"), stored.get("high")) != (wanted.method, wanted.low, wanted.high):
        return None
    return IntensityNormalization(wanted.method, wanted.low, wanted.high, tuple(float(v) for v in stored["offset"]),
                                  tuple(float(v) for v in stored["scale"]))


def _record_shares(output: Any, shard: Shard, plan: PredictionPlan) -> list[int]:
    """Write (once per ``N``) the cut into shares and make ``N`` the output's current count; refuse while tasks of
    another count run."""
    folder = shards_folder(output, shard.count)
    current = current_count(output)
    if current is not None and current != shard.count:
        others = running_shards(output)
        if others:
            raise OutputExistsError(
                f"output {str(output)!r} is being written by tasks of {current} shares ({', '.join(others[:4])} "
                f"running); this task is share {shard}: run every task with the same N (--shard I/{current}), or "
                "wait for them to stop")
    plan_path = folder / "plan.json"
    try:
        bounds = json.loads(plan_path.read_text())["bounds"]
    except (OSError, ValueError, KeyError, TypeError):
        bounds = partition(plan.grid, shard.count)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan_path, json.dumps({"count": shard.count, "bounds": bounds, "tiles": len(plan.grid),
                                                 "grid_shape": list(plan.grid.grid_shape)}))
    if current != shard.count:
        atomic_write_text(folder.parent / "current.json", json.dumps({"count": shard.count}))
    return list(bounds)


def predict_shard(model: nn.Module, source: ImageSource, output: Any, config: PredictConfig, shard: Shard, *,
                  info: ModelInfo, progress: Callable[[int, int], None] | None = None,
                  stop: Callable[[], bool] | None = None) -> ShardReport:
    """Run share ``shard`` of the prediction of ``source`` into ``output`` (see the module's description)."""
    check_shardable(output, config)
    started = time.perf_counter()
    with contextlib.ExitStack() as held:
        with output_lock(output, role="plan", wait_for=("plan", "finalize")):
            recorded = recorded_fingerprint(output)
            plan = plan_prediction(model, source, config, _shared_normalization(recorded, config, model),
                                   info=info, recorded=recorded)
            target = create_output(output, shape=plan.output_shape, dtype=plan.output_dtype,
                                   chunks=plan.grid.core, fingerprint=plan.fingerprint,
                                   calibration=output_calibration(source, config), input_path=source.path,
                                   **zarr_options(config, plan.out_channels, model))
            assert isinstance(target, ZarrOutput)
            if target.finished:
                logger.info("output %s is complete: share %s has nothing to do", output, shard)
                units = len(range(*partition(plan.grid, shard.count)[shard.index:shard.index + 2]))
                return ShardReport(shard, plan, units, 0, time.perf_counter() - started, False)
            bounds = _record_shares(output, shard, plan)
            held.enter_context(output_lock(output, part=shard_lock_part(shard.index, shard.count), role="shard"))
        tiles = list(shard_tiles(plan.grid, shard, bounds))
        record = ShardProgress(output, shard.index, shard.count, len(tiles))

        calls: list[int] = []

        def on_progress(done: int, total: int) -> None:
            if not calls:  # the first call: the tiles a run before this one did
                record.start(done)
            calls.append(done)
            record.update(done)
            if progress is not None:
                progress(done, total)

        record.start(0)
        try:
            computed = run_tiles(model, plan, source, tiles, sink_for(plan, target, source), progress=on_progress,
                                 stop=stop)
        except Paused as paused:
            record.update(paused.done, "paused", force=True)
            raise Paused(f"shard {shard} paused at {100 * paused.done / max(paused.total, 1):.0f} % "
                         f"({paused.done} of {paused.total} tiles): rerun to resume", paused.done,
                         paused.total) from None
        except BaseException:
            record.update(record.done, "failed", force=True)
            raise
        record.update(len(tiles), "done", force=True)
    logger.info("shard %s: %d of its %d tiles predicted in %.1f s", shard, computed, len(tiles),
                time.perf_counter() - started)
    completed = _complete_if_last(output, target, shard)
    return ShardReport(shard, plan, len(tiles), computed, time.perf_counter() - started, completed)


def _left(output: Any, count: int) -> list[int]:
    """The shares whose records do not say done."""
    return [i for i, r in enumerate(share_records(output, count)) if not (r and r.get("state") == "done")]


def _complete_if_last(output: Any, target: ZarrOutput, shard: Shard) -> bool:
    """Complete the output if every share is done and none runs; False when that is left to another task."""
    left = _left(output, shard.count)
    if left:
        logger.info("shard %s done; %d of %d shares still to do (e.g. %s): the task that finishes last completes "
                    "the output", shard, len(left), shard.count, ", ".join(map(str, left[:5])))
        return False
    try:
        with output_lock(output, role="finalize", wait_for=("plan",)):
            plan_path = shards_folder(output, shard.count) / "plan.json"
            if target.finished or not plan_path.exists() or running_shards(output) or _left(output, shard.count):
                return False  # completed meanwhile, or a rerun of a share runs: it completes the output
            done = [r for r in share_records(output, shard.count) if r]
            first = min(float(r.get("started", time.time())) for r in done)
            finished = time.time()
            units = sum(int(r.get("units", 0)) for r in done)
            summary = {"shards": shard.count, "units": units, "started": _iso(first), "finished": _iso(finished),
                       "units_per_second": units / max(finished - first, 1e-9)}
            logger.info("every share of %s is done: writing the pyramid and marking it complete", output)
            target.finalize(summary=summary)
            return True
    except OutputExistsError:  # another task completes it now
        logger.info("shard %s done; another task is completing the output", shard)
        return False


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))
