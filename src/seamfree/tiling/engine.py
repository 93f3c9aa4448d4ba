"""The prediction engine: tiles read ahead by a thread, batched forward passes in eval mode, results to a sink.

Every path that runs a model on tiles comes through here: :func:`~seamfree.predict`, the distributed workers,
the diagnostics and the training's validation. :func:`run_tiles` is the whole loop; :func:`predict_batches` is
its lower half for callers that consume predictions themselves; :func:`forward_batch` is one batch.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from seamfree.errors import ConfigError, DataError, Paused
from seamfree.io.markers import block_digest
from seamfree.io.readers import ImageSource
from seamfree.layers.modes import eval_mode
from seamfree.models.describe import resolve_activation, select_output
from seamfree.tiling.device import BatchTransfer, DeviceBatch, compiled, to_memory_format
from seamfree.tiling.grid import Tile
from seamfree.tiling.normalize import IntensityNormalization
from seamfree.tiling.specs import RuntimeSpec

if TYPE_CHECKING:
    from seamfree.tiling.sinks import TileSink


class TileRun(Protocol):
    """What running tiles needs of a plan (a :class:`~seamfree.tiling.plan.PredictionPlan` is one): the engine
    depends on these three fields, not on the plan."""

    @property
    def normalization(self) -> IntensityNormalization: ...

    @property
    def runtime(self) -> RuntimeSpec: ...

    @property
    def tiles_per_batch(self) -> int: ...

__all__ = [
    "StageSeconds",
    "eval_mode",
    "forward_batch",
    "predict_batches",
    "read_window",
    "resolve_activation",
    "run_tiles",
]

logger = logging.getLogger(__name__)

# Tiles read ahead of the forward pass, in batches.
PREFETCH_BATCHES = 2


def read_window(source: ImageSource, window: Sequence[slice]) -> np.ndarray:
    """Return ``window`` of the image reflect-padded past its far end, shape ``(C, *window)``.

    Enough real data is read before the border for the reflection to match the whole-image padding.
    """
    reads, pads, offsets = [], [], []
    for w, n in zip(window, source.spatial_shape):
        beyond = max(0, w.stop - n)
        start = min(w.start, max(0, n - 1 - beyond))  # reflection needs `beyond` voxels before the end
        reads.append(slice(start, min(w.stop, n)))
        pads.append((0, beyond))
        offsets.append(w.start - start)
    data = source.read(reads)
    if any(p[1] for p in pads):
        data = np.pad(data, [(0, 0), *pads], mode="reflect" if min(data.shape[1:]) > 1 else "edge")
    return data[(slice(None), *(slice(o, o + w.stop - w.start) for o, w in zip(offsets, window)))]


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """The activation of a forward's fresh output, in place where it can be (the same values, no copy)."""
    if activation == "sigmoid":
        return logits.sigmoid_() if not logits.requires_grad else torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    return logits


def _flips(spatial_dims: int) -> list[tuple[int, ...]]:
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def forward_batch(model: nn.Module, batch: np.ndarray | DeviceBatch, runtime: RuntimeSpec) -> np.ndarray:
    """Return the activated predictions ``(N, C_out, *spatial)`` of a normalized batch, with optional AMP/TTA.

    ``batch``: a numpy array, or a batch already on its way to the device (:class:`BatchTransfer`). The caller
    chooses the model's mode and gradient context (:func:`eval_mode`, ``torch.inference_mode``).
    """
    if runtime.activation == "auto":
        raise ConfigError("forward_batch needs a resolved activation, got 'auto'; use "
                          "runtime.resolved(resolve_activation(model, 'auto'))")
    if isinstance(batch, DeviceBatch):
        x = batch.ready()
    else:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(runtime.device)
    x = to_memory_format(x, runtime.channels_last)
    model = compiled(model) if runtime.compile else model
    use_amp = runtime.amp and x.device.type == "cuda"
    flips = _flips(x.dim() - 2) if runtime.tta else [()]
    total: torch.Tensor | None = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        for dims in flips:
            flipped = torch.flip(x, dims) if dims else x
            y = _activate(select_output(model(flipped), runtime.output).float(), runtime.activation)
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
    assert total is not None  # at least one flip (the identity) always runs
    result = (total if len(flips) == 1 else total / len(flips)).cpu().numpy()
    if not np.isfinite(result).all():
        raise DataError(f"the model's output holds {int(np.isnan(result).sum())} NaN and "
                        f"{int(np.isinf(result).sum())} infinite values for a batch of finite inputs: the network "
                        "overflows (weights or activations beyond float32), or holds NaN weights; check the model "
                        "(e.g. seamfree audit) or its training")
    return result


def input_digest(raw: np.ndarray) -> str:
    """sha256 of a tile's raw input window (recorded in its done marker: a resume sees a changed input)."""
    return block_digest(raw)


def _prefetch(source: ImageSource, tiles: Iterator[Tile], normalization: IntensityNormalization,
              tiles_per_batch: int, stop: threading.Event, digests_wanted: bool,
              transfer: BatchTransfer) -> Generator[tuple[list[Tile], DeviceBatch, list[str | None]], None, None]:
    """Yield (tiles, normalized batch sent to the device, input digests or Nones) read by a background thread, a
    few batches ahead; on CUDA the copy to the GPU starts in that thread, overlapping the forward passes."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_BATCHES)

    def reader() -> None:
        try:
            while not stop.is_set():
                chunk = list(itertools.islice(tiles, tiles_per_batch))
                if not chunk:
                    break
                raw = [read_window(source, t.read) for t in chunk]
                normalized = [normalization.apply(r) for r in raw]
                batch = normalized[0][np.newaxis] if len(normalized) == 1 else np.stack(normalized)
                digests = [input_digest(r) if digests_wanted else None for r in raw]
                # integers normalized with finite statistics are finite: only float inputs are checked
                if any(r.dtype.kind in "fc" for r in raw) and not np.isfinite(batch).all():
                    raise DataError(
                        f"the input {source.where} contains NaN or Inf values in the tile read at "
                        f"{chunk[0].read}; clean or mask them before prediction (e.g. numpy.nan_to_num)"
                    )
                buffer.put((chunk, transfer.send(batch), digests))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put(exc)
        finally:
            buffer.put(None)

    thread = threading.Thread(target=reader, name="seamfree-prefetch", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def predict_batches(model: nn.Module, source: ImageSource, tiles: Iterable[Tile], *,
                    normalization: IntensityNormalization, runtime: RuntimeSpec,
                    tiles_per_batch: int) -> Iterator[tuple[list[Tile], np.ndarray]]:
    """Yield ``(tiles, predictions of their whole read windows)`` batch by batch, in eval mode.

    ``normalization`` must be resolved (global statistics) and ``runtime.activation`` resolved for the model.
    """
    for batch_tiles, predictions, _ in _predict(model, source, tiles, normalization, runtime, tiles_per_batch):
        yield batch_tiles, predictions


@dataclass
class StageSeconds:
    """Wall seconds of the main thread by stage: waiting for tiles to be read and normalized (``read``), the
    forward passes (``forward``), handing predictions to the sink (``write``: conversion, digests, the store's
    encoding and writing), and, filled by the caller, planning (``plan``) and the pyramid (``pyramid``)."""

    plan: float = 0.0
    read: float = 0.0
    forward: float = 0.0
    write: float = 0.0
    pyramid: float = 0.0

    def bounded_by(self) -> str:
        """The stage that took the most time."""
        shares = self.to_dict()
        return max(shares, key=shares.__getitem__)

    def to_dict(self) -> dict[str, float]:
        return {"plan": self.plan, "read": self.read, "forward": self.forward, "write": self.write,
                "pyramid": self.pyramid}


def _predict(model: nn.Module, source: ImageSource, tiles: Iterable[Tile], normalization: IntensityNormalization,
             runtime: RuntimeSpec, tiles_per_batch: int, digests_wanted: bool = False,
             times: StageSeconds | None = None) -> Generator[tuple[list[Tile], np.ndarray, list[str | None]], None,
                                                               None]:
    if not normalization.resolved:
        raise ConfigError(f"tiles need resolved intensity statistics, got {normalization}; "
                          "call compute_normalization(source, normalization) first")
    stop = threading.Event()
    transfer = BatchTransfer(runtime.device)
    times = times or StageSeconds()
    with eval_mode(model), torch.inference_mode():
        batches = _prefetch(source, iter(tiles), normalization, tiles_per_batch, stop, digests_wanted, transfer)
        try:
            while True:
                started = time.perf_counter()
                item = next(batches, None)
                ready = time.perf_counter()
                times.read += ready - started
                if item is None:
                    return
                batch_tiles, batch, digests = item
                predictions = forward_batch(model, batch, runtime)
                times.forward += time.perf_counter() - ready
                yield batch_tiles, predictions, digests
        finally:
            batches.close()


def _changed_inputs(source: ImageSource, done: Sequence[Tile], sink: TileSink) -> list[Tile]:
    """Return the done tiles whose input changed since they were predicted (their markers forgotten)."""
    changed = []
    for tile in done:
        recorded = sink.input_digest(tile)
        if recorded is not None and recorded != input_digest(read_window(source, tile.read)):
            sink.forget(tile)
            changed.append(tile)
    if changed:
        logger.warning("the input %s changed under %d block(s) already predicted (%s%s): predicting them again",
                       source.where, len(changed), ", ".join(str(t.index) for t in changed[:5]),
                       ", ..." if len(changed) > 5 else "")
    return changed


def run_tiles(model: nn.Module, plan: TileRun, source: ImageSource, tiles: Sequence[Tile],
              sink: TileSink, *, progress: Callable[[int, int], None] | None = None,
              stop: Callable[[], bool] | None = None, times: StageSeconds | None = None) -> int:
    """Predict the ``tiles`` the sink still needs and hand each prediction to it; return how many ran.

    ``progress(done, total)`` is called once before the first batch (tiles already done, e.g. on resume) and after
    every batch. The sink is finished at the end, so a rerun with the same sink resumes. ``stop()`` is asked
    before every batch: once it says True, no batch starts, the batch in flight is written, and
    :class:`~seamfree.errors.Paused` is raised (a rerun resumes).
    """
    todo = sink.pending(tiles)
    pending = {t.index for t in todo}
    todo += _changed_inputs(source, [t for t in tiles if t.index not in pending], sink)
    done = len(tiles) - len(todo)
    if progress is not None:
        progress(done, len(tiles))
    times = times or StageSeconds()
    batches = _predict(model, source, todo if stop is None or not stop() else [], plan.normalization,
                       plan.runtime, plan.tiles_per_batch, sink.records_inputs, times)
    try:
        for batch_tiles, predictions, digests in batches:
            started = time.perf_counter()
            for tile, prediction, digest in zip(batch_tiles, predictions, digests):
                sink.add(tile, prediction, digest)
            times.write += time.perf_counter() - started
            done += len(batch_tiles)
            if progress is not None:
                progress(done, len(tiles))
            if stop is not None and stop() and done < len(tiles):
                break
    finally:
        batches.close()
    started = time.perf_counter()
    sink.finish()
    times.write += time.perf_counter() - started
    if done < len(tiles):
        raise Paused(f"paused at {100 * done / max(len(tiles), 1):.0f} % ({done} of {len(tiles)} tiles)",
                     done, len(tiles))
    return len(todo)
