"""Seamless tiled prediction: ``predict(model, image, output)``.

Data flow: open the image lazily → global intensity statistics (one streamed pass, or given) → TileGrid
(stride-aligned tiles, halo ≥ receptive-field radius, reflect padding only at the image end) → tiles read and
normalized by a prefetch thread → batched forward in eval mode under ``torch.inference_mode`` (optional AMP
on CUDA, optional flip test-time augmentation) → crop cores (exact) or blend overlapping cores (bounded
buffer) → writes → a done marker per written block → output marked complete. Memory is
O(tile × batch + blend buffer), never O(image).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seamfree.errors import ConfigError, DataError, HaloError, ShapeError
from seamfree.io.readers import ImageSource, open_image
from seamfree.io.writers import OutputTarget, create_output
from seamfree.tiling.blend import BlendAccumulator, BlendWindow
from seamfree.tiling.grid import Tile, TileGrid, as_axis_tuple, round_up
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.receptive import ReceptiveField, measure_receptive_field, model_geometry, suggest_tiling

__all__ = [
    "PredictConfig",
    "PredictionPlan",
    "PredictionReport",
    "check_model_input",
    "forward_batch",
    "plan_prediction",
    "predict",
    "predict_tiles",
    "predict_whole",
    "read_window",
    "resolve_activation",
    "write_tiles",
]

logger = logging.getLogger(__name__)

Activation = Literal["auto", "none", "sigmoid", "softmax"]
OutputKind = Literal["float32", "uint8", "mask"]


@dataclass(frozen=True)
class PredictConfig:
    """Options of :func:`predict`.

    Attributes
    ----------
    core : int or tuple, optional
        Core shape; by default chosen by :func:`suggest_tiling` from ``memory_budget``.
    halo : "auto", int or tuple
        Context on each side of a core; "auto" measures the receptive field. A halo smaller than the
        receptive-field radius is an error in crop stitching unless ``allow_small_halo``.
    stitching : {"crop", "blend"}
        "crop" is exact when halo ≥ receptive field; "blend" averages overlapping cores with weights.
    overlap : int or tuple
        Core overlap for blending (default: a quarter of the core).
    blend_window : {"linear", "gaussian"}
    batch_size : int, optional
        Tiles per forward pass (default from :func:`suggest_tiling`).
    device : str
        "cpu", "cuda", "cuda:1", ...
    amp : bool
        Mixed precision (bfloat16) on CUDA; ignored on CPU.
    tta : bool
        Average predictions over all flips of the spatial axes (exact under tiling too).
    normalization : IntensityNormalization
        Input intensity normalization; statistics computed once from the whole image unless given.
    activation : {"auto", "none", "sigmoid", "softmax"}
        Applied to the model output; "auto": sigmoid/softmax for seamfree models that output logits,
        none for other models.
    output_kind : {"float32", "uint8", "mask"}
        Probabilities, probabilities scaled to 0..255, or a mask (threshold for one channel, argmax otherwise).
    threshold : float
        Threshold for ``output_kind="mask"``.
    memory_budget : int, optional
        Bytes the tiles of one batch may use (activations), for the automatic core and batch size.
    pinned_core : bool
        Error (instead of rounding up) when ``core`` is not a multiple of the network stride.
    allow_small_halo : bool
        Accept a halo smaller than the receptive field (not exact; for demonstrations and comparisons).
    overwrite : bool
        Delete an existing output path first instead of resuming into it.
    grid_offset : int or tuple
        Shift of the core boundaries (crop stitching), see :meth:`TileGrid.create`; diagnostics use it to put
        the seams elsewhere.
    """

    core: int | tuple[int, ...] | None = None
    halo: Literal["auto"] | int | tuple[int, ...] = "auto"
    stitching: Literal["crop", "blend"] = "crop"
    overlap: int | tuple[int, ...] | None = None
    blend_window: BlendWindow = "linear"
    batch_size: int | None = None
    device: str = "cpu"
    amp: bool = False
    tta: bool = False
    normalization: IntensityNormalization = field(default_factory=IntensityNormalization)
    activation: Activation = "auto"
    output_kind: OutputKind = "float32"
    threshold: float = 0.5
    memory_budget: int | None = None
    pinned_core: bool = False
    allow_small_halo: bool = False
    overwrite: bool = False
    grid_offset: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        if self.stitching not in ("crop", "blend"):
            raise ConfigError(f"stitching must be 'crop' or 'blend', got {self.stitching!r}")
        if self.output_kind not in ("float32", "uint8", "mask"):
            raise ConfigError(f"output_kind must be 'float32', 'uint8' or 'mask', got {self.output_kind!r}")
        if self.activation not in ("auto", "none", "sigmoid", "softmax"):
            raise ConfigError(f"activation must be auto/none/sigmoid/softmax, got {self.activation!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class PredictionReport:
    """What a prediction did: geometry, normalization, counts and timing."""

    grid: TileGrid
    receptive_field: ReceptiveField | None
    normalization: IntensityNormalization
    tiles_total: int
    tiles_computed: int
    seconds: float
    batch_size: int
    activation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.grid.image_shape), "core": list(self.grid.core), "halo": list(self.grid.halo),
            "tile_shape": list(self.grid.tile_shape), "overlap": list(self.grid.overlap),
            "network_stride": list(self.grid.network_stride), "compute_ratio": self.grid.compute_ratio,
            "receptive_field": self.receptive_field.to_dict() if self.receptive_field else None,
            "normalization": self.normalization.to_dict(), "tiles_total": self.tiles_total,
            "tiles_computed": self.tiles_computed, "seconds": self.seconds, "batch_size": self.batch_size,
            "activation": self.activation,
        }


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


def resolve_activation(model: nn.Module, activation: Activation) -> str:
    """Return the activation applied to the model output ("auto": sigmoid/softmax for seamfree logits)."""
    if activation != "auto":
        return activation
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("final_activation", None) is None and "out_channels" in config:
        return "sigmoid" if int(config["out_channels"]) == 1 else "softmax"
    return "none"


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    return logits


def _flips(spatial_dims: int) -> list[tuple[int, ...]]:
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def forward_batch(model: nn.Module, batch: np.ndarray, config: PredictConfig, activation: str) -> np.ndarray:
    """Return the activated predictions (N, C_out, *spatial) of a normalized batch, with optional AMP/TTA."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(config.device)
    use_amp = config.amp and x.device.type == "cuda"
    flips = _flips(x.dim() - 2) if config.tta else [()]
    total: torch.Tensor | None = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        for dims in flips:
            flipped = torch.flip(x, dims) if dims else x
            y = _activate(model(flipped).float(), activation)
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
    assert total is not None
    return (total / len(flips)).cpu().numpy()


def check_model_input(source: ImageSource, in_channels: int, spatial_dims: int) -> None:
    """Raise ShapeError unless the image has the model's number of spatial axes and input channels."""
    if source.spatial_dims != spatial_dims:
        raise ShapeError(
            f"the image has {source.spatial_dims} spatial dimensions (shape {source.shape}), the model expects "
            f"{spatial_dims}; pass axes=... (CLI --axes) if an axis was misread"
        )
    if source.shape[0] != in_channels:
        raise ShapeError(
            f"the image has {source.shape[0]} channel(s) (shape {source.shape}), the model expects "
            f"{in_channels}; select or stack channels, or pass axes=... if the channel axis was misread"
        )


def _resolve_grid(
    model: nn.Module, source: ImageSource, config: PredictConfig, stride: tuple[int, ...]
) -> tuple[TileGrid, ReceptiveField | None, int]:
    dims = source.spatial_dims
    rf = None
    if config.halo == "auto":
        rf = measure_receptive_field(model, spatial_dims=dims)
        halo = rf.halo
        if rf.tile_dependent:
            logger.warning(
                "this model's normalization depends on the tile: tiled prediction cannot be exact and "
                "seams are expected (run `seamfree diagnose`); halo %s covers only edge effects", halo
            )
    else:
        halo = as_axis_tuple(config.halo, dims, "halo")
    core = config.core
    batch = config.batch_size
    if core is None or batch is None:
        suggestion = suggest_tiling(model, source.spatial_shape, memory_budget=config.memory_budget,
                                    device=config.device, receptive_field=rf or _fixed_rf(halo, stride))
        core = suggestion.core if core is None else core
        batch = suggestion.batch_size if batch is None else batch
    core_t = as_axis_tuple(core, dims, "core")
    overlap: int | tuple[int, ...] = 0
    if config.stitching == "blend":
        overlap = config.overlap if config.overlap is not None else tuple(round_up(c // 4, s) for c, s in
                                                                          zip(core_t, stride))
    grid = TileGrid.create(source.spatial_shape, core_t, halo, network_stride=stride, overlap=overlap,
                           offset=config.grid_offset, pinned=config.pinned_core)
    return grid, rf, int(batch)


def _fixed_rf(halo: tuple[int, ...], stride: tuple[int, ...]) -> ReceptiveField:
    return ReceptiveField(halo, halo, stride, False, 0.0)


def _check_halo_vs_rf(grid: TileGrid, rf: ReceptiveField | None, model: nn.Module, config: PredictConfig) -> None:
    if config.stitching != "crop" or config.allow_small_halo or config.halo == "auto":
        return
    measured = rf or measure_receptive_field(model, spatial_dims=grid.spatial_dims)
    small = [h < r and c + 2 * h < p for h, r, c, p in zip(grid.halo, measured.radius, grid.core,
                                                            grid.padded_shape)]
    if any(small):
        raise HaloError(
            f"halo {grid.halo} is smaller than the receptive-field radius {measured.radius} of this model; "
            f"pass halo >= {measured.halo} (or halo='auto'), or allow_small_halo=True to accept seams"
        )


def _fingerprint(source: ImageSource, model: nn.Module, config: PredictConfig, grid: TileGrid,
                 normalization: IntensityNormalization, activation: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    sample = source.read(tuple(slice(0, min(s, 64)) for s in source.spatial_shape))
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("device", "batch_size", "overwrite", "normalization", "memory_budget", "amp")}
    return {
        "input": {"path": source.path, "shape": list(source.shape), "dtype": str(source.dtype),
                  "sample_sha256": hashlib.sha256(np.ascontiguousarray(sample).tobytes()).hexdigest()},
        "model": digest.hexdigest(),
        "settings": json.loads(json.dumps(settings, default=str)),
        "grid": {"core": list(grid.core), "halo": list(grid.halo), "overlap": list(grid.overlap)},
        "normalization": normalization.to_dict(),
        "activation": activation,
    }


def _convert_output(values: np.ndarray, config: PredictConfig) -> np.ndarray:
    if config.output_kind == "float32":
        return values.astype(np.float32, copy=False)
    if config.output_kind == "uint8":
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    if values.shape[0] == 1:
        return (values > config.threshold).astype(np.uint8)
    return np.argmax(values, axis=0)[np.newaxis].astype(np.uint8)


def _prefetch(source: ImageSource, tiles: Iterator[Tile], normalization: IntensityNormalization,
              batch_size: int, stop: threading.Event) -> Iterator[tuple[list[Tile], np.ndarray]]:
    """Yield (tiles, normalized batch) read by a background thread, two batches ahead."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=2)

    def reader() -> None:
        try:
            while not stop.is_set():
                chunk = list(itertools.islice(tiles, batch_size))
                if not chunk:
                    break
                arrays = [normalization.apply(read_window(source, t.read)) for t in chunk]
                batch = np.stack(arrays)
                if not np.isfinite(batch).all():
                    raise DataError(
                        f"the input {source.where} contains NaN or Inf values in the tile read at "
                        f"{chunk[0].read}; clean or mask them before prediction (e.g. numpy.nan_to_num)"
                    )
                buffer.put((chunk, batch))
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


def predict(
    model: nn.Module,
    image: Any,
    output: Any = None,
    *,
    config: PredictConfig | None = None,
    axes: str | None = None,
    progress: bool | Callable[[int], None] = False,
    report: list[PredictionReport] | None = None,
) -> Any:
    """Return the tiled prediction of ``model`` on ``image``, written to ``output``.

    Parameters
    ----------
    model : nn.Module
        Segmentation model with same-size output; run in eval mode (its mode is restored afterwards).
    image : array-like or path
        ``(C, *spatial)`` or ``spatial`` array, or a .npy/.zarr/.tif/.h5 path (see :func:`open_image`).
    output : None, array or path
        None: return a new numpy array; an array: written in place; a path: OME-Zarr (``.zarr``) or TIFF,
        resumable (a rerun with the same output continues where it stopped).
    config : PredictConfig, optional
        Tiling, stitching, device and output options.
    axes : str, optional
        Axis order of ``image`` (e.g. ``"YXC"``), when not channel-first.
    progress : bool or callable
        True for a tqdm progress bar; a callable receives the number of tiles done after each batch.
    report : list, optional
        If given, a :class:`PredictionReport` is appended to it.

    Returns
    -------
    ndarray, zarr array or path
        Output of shape ``(C_out, *spatial)``.

    Examples
    --------
    >>> import numpy as np
    >>> from seamfree.models import UNet
    >>> net = UNet(2, 1, 1, depth=2, features=4, norm="batchrenorm")
    >>> predict(net, np.random.rand(70, 50), config=PredictConfig(core=32)).shape
    (1, 70, 50)
    """
    config = config or PredictConfig()
    dims, _, _ = model_geometry(model)
    source = open_image(image, spatial_dims=dims, axes=axes)
    try:
        return _predict_source(model, source, output, config, progress, report)
    finally:
        if source is not image:
            source.close()


@dataclass(frozen=True)
class PredictionPlan:
    """Everything decided before the first tile runs: geometry, statistics, output layout, fingerprint.

    Made by :func:`plan_prediction`; shared by :func:`predict` and the distributed runner, so that both write
    the same output (and either can resume the other's).
    """

    grid: TileGrid
    receptive_field: ReceptiveField | None
    batch_size: int
    activation: str
    out_channels: int
    normalization: IntensityNormalization
    fingerprint: dict[str, Any]
    output_shape: tuple[int, ...]
    output_dtype: np.dtype


def plan_prediction(model: nn.Module, source: ImageSource, config: PredictConfig,
                    normalization: IntensityNormalization | None = None) -> PredictionPlan:
    """Return the plan of a tiled prediction of ``source`` (``normalization``: statistics already computed)."""
    dims, in_channels, stride = model_geometry(model)
    check_model_input(source, in_channels, dims)
    normalization = normalization or compute_normalization(source, config.normalization)
    was_training = model.training
    model.eval()
    try:
        grid, rf, batch_size = _resolve_grid(model, source, config, stride)
        _check_halo_vs_rf(grid, rf, model, config)
        activation = resolve_activation(model, config.activation)
        out_channels = _output_channels(model, source, grid, normalization, config, activation)
    finally:
        model.train(was_training)
    stored_channels = 1 if config.output_kind == "mask" else out_channels
    dtype = np.dtype(np.float32 if config.output_kind == "float32" else np.uint8)
    return PredictionPlan(grid, rf, batch_size, activation, out_channels, normalization,
                          _fingerprint(source, model, config, grid, normalization, activation),
                          (stored_channels, *source.spatial_shape), dtype)


def write_tiles(model: nn.Module, source: ImageSource, tiles: Sequence[Tile], target: OutputTarget,
                plan: PredictionPlan, config: PredictConfig) -> int:
    """Predict ``tiles`` (crop stitching), write each core and mark it done; return how many were written.

    Tiles already marked done are skipped, so a block of tiles can be retried after any interruption.
    """
    todo = [t for t in tiles if not target.is_done(t.index)]
    was_training = model.training
    model.eval()
    try:
        for batch_tiles, predictions in _predict_batches(model, source, todo, plan.normalization, config,
                                                         plan.activation, plan.batch_size):
            for tile, prediction in zip(batch_tiles, predictions):
                target.write(tile.write, _convert_output(prediction[(slice(None), *tile.crop)], config))
                target.mark_done(tile.index)
    finally:
        model.train(was_training)
    return len(todo)


def _predict_source(model: nn.Module, source: ImageSource, output: Any, config: PredictConfig,
                    progress: bool | Callable[[int], None], report: list[PredictionReport] | None) -> Any:
    started = time.perf_counter()
    plan = plan_prediction(model, source, config)
    grid = plan.grid
    target = create_output(output, shape=plan.output_shape, dtype=plan.output_dtype, chunks=grid.core,
                           fingerprint=plan.fingerprint, scale=source.scale, overwrite=config.overwrite)
    was_training = model.training
    model.eval()
    try:
        computed = _run(model, source, grid, target, plan.normalization, config, plan.activation, plan.batch_size,
                        plan.out_channels, progress)
        result = target.finalize()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    logger.info("predicted %d of %d tiles (core %s, halo %s) in %.1f s", computed, len(grid), grid.core,
                grid.halo, seconds)
    if report is not None:
        report.append(PredictionReport(grid, plan.receptive_field, plan.normalization, len(grid), computed, seconds,
                                       plan.batch_size, plan.activation))
    return result


@torch.inference_mode()
def _output_channels(model: nn.Module, source: ImageSource, grid: TileGrid,
                     normalization: IntensityNormalization, config: PredictConfig, activation: str) -> int:
    config_channels = getattr(model, "config", {}).get("out_channels") if isinstance(
        getattr(model, "config", None), dict) else None
    if config_channels is not None:
        return int(config_channels)
    first = next(grid.tiles())
    tile = normalization.apply(read_window(source, first.read))[np.newaxis]
    out = forward_batch(model, tile, replace(config, tta=False), activation)
    if out.shape[2:] != tile.shape[2:]:
        raise ShapeError(
            f"the model's output spatial shape {out.shape[2:]} differs from its input {tile.shape[2:]}; "
            "seamfree needs models that predict every input voxel"
        )
    return int(out.shape[1])


def _run(model: nn.Module, source: ImageSource, grid: TileGrid, target: OutputTarget,
         normalization: IntensityNormalization, config: PredictConfig, activation: str, batch_size: int,
         out_channels: int, progress: bool | Callable[[int], None]) -> int:
    """Predict every tile not yet done; return how many tiles were computed."""
    blender: BlendAccumulator | None = None
    if config.stitching == "blend":
        def emit(window: tuple[slice, ...], values: np.ndarray) -> None:
            target.write(window, _convert_output(values, config))
            target.mark_done(_block_id(window))

        blender = BlendAccumulator(grid, out_channels, config.blend_window, emit)
        blender.skip_done(lambda window: target.is_done(_block_id(window)))
        todo = [t for t in grid.tiles() if blender.needs(t)]
    else:
        todo = [t for t in grid.tiles() if not target.is_done(t.index)]
    bar = _progress_bar(progress, len(grid), len(grid) - len(todo))
    for tiles, predictions in _predict_batches(model, source, todo, normalization, config, activation, batch_size):
        for tile, prediction in zip(tiles, predictions):
            if blender is not None:
                blender.add(tile, prediction)
                continue
            target.write(tile.write, _convert_output(prediction[(slice(None), *tile.crop)], config))
            target.mark_done(tile.index)
        bar(len(tiles))
    bar(0, close=True)
    return len(todo)


def _predict_batches(model: nn.Module, source: ImageSource, tiles: Sequence[Tile],
                     normalization: IntensityNormalization, config: PredictConfig, activation: str,
                     batch_size: int) -> Iterator[tuple[list[Tile], np.ndarray]]:
    """Yield (tiles, predictions of their whole windows) batch by batch, reading ahead in a thread."""
    stop = threading.Event()
    with torch.inference_mode():
        for batch_tiles, batch in _prefetch(source, iter(tiles), normalization, batch_size, stop):
            yield batch_tiles, forward_batch(model, batch, config, activation)


def predict_tiles(
    model: nn.Module,
    source: ImageSource,
    tiles: Sequence[Tile],
    *,
    normalization: IntensityNormalization,
    config: PredictConfig | None = None,
    batch_size: int = 1,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield ``(tile, prediction)`` for each tile: the activated prediction of its whole read window.

    The low-level step of :func:`predict` for callers that choose their own tiles (diagnostics compare
    overlapping tiles). ``normalization`` must be resolved (see :func:`compute_normalization`); the model is
    put in eval mode for the duration and restored.
    """
    config = config or PredictConfig()
    if not normalization.resolved:
        raise ConfigError(f"predict_tiles needs resolved intensity statistics, got {normalization}; "
                          "call compute_normalization(source, normalization) first")
    activation = resolve_activation(model, config.activation)
    was_training = model.training
    model.eval()
    try:
        for batch_tiles, predictions in _predict_batches(model, source, tiles, normalization, config, activation,
                                                         batch_size):
            yield from zip(batch_tiles, predictions)
    finally:
        model.train(was_training)


def _block_id(window: tuple[slice, ...]) -> tuple[int, ...]:
    """Done-marker id of a blend block: its origin (blend runs never use tile-index markers)."""
    return tuple(w.start for w in window)


def _progress_bar(progress: bool | Callable[[int], None], total: int, initial: int) -> Any:
    if callable(progress):
        done = [initial]

        def callback(n: int, close: bool = False) -> None:
            done[0] += n
            if not close:
                progress(done[0])
        return callback
    if not progress:
        return lambda n, close=False: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="tile", desc="predict")

    def update(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()
    return update


@torch.inference_mode()
def predict_whole(
    model: nn.Module,
    image: Any,
    *,
    normalization: IntensityNormalization | None = None,
    activation: Activation = "auto",
    device: str = "cpu",
    axes: str | None = None,
) -> np.ndarray:
    """Return the whole-image prediction (one forward pass): the reference tiled prediction must equal.

    The image is normalized with the same global statistics and reflect-padded at its far end to a multiple of
    the network stride, exactly as :func:`predict` pads it. Only for images that fit in memory.
    """
    dims, in_channels, stride = model_geometry(model)
    with open_image(image, spatial_dims=dims, axes=axes) as source:
        check_model_input(source, in_channels, dims)
        normalization = compute_normalization(source, normalization or IntensityNormalization())
        padded = tuple(slice(0, round_up(n, s)) for n, s in zip(source.spatial_shape, stride))
        x = normalization.apply(read_window(source, padded))[np.newaxis]
    was_training = model.training
    model.eval()
    try:
        out = forward_batch(model, x, PredictConfig(device=device), resolve_activation(model, activation))
    finally:
        model.train(was_training)
    crop: tuple[int | slice, ...] = (0, slice(None), *(slice(0, n) for n in source.spatial_shape))
    return out[crop]

