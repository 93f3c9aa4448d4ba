"""``fix_model``: a trained model with tile- or batch-dependent normalization made seamless, without labels.

- **BatchNorm** (train/eval disparity at small batches): converted exactly to BatchRenorm, its statistics
  recalibrated on the user's images (the fast path; nothing is trained).
- **InstanceNorm / GroupNorm / layer norms over the tile** (seams): each such layer is replaced by BatchRenorm,
  and the new model (the student) is trained to reproduce the original's *whole-image* predictions on the
  user's own unlabeled images (self-distillation: the original is the teacher). Its running statistics are then
  recalibrated on the same images, so that every tile is normalized alike: tiled prediction equals whole-image
  prediction exactly. How well the student agrees with the original is measured on held-out data (the last
  image, or the last quarter of a single image) and reported; the best student is kept.
- **Global context that is not a normalization** (a style vector, attention, adaptive pooling): not fixable by
  this means, and said so (:class:`~seamfree.errors.NotFixableError`), never a false "fixed".
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from seamfree.data.patches import foreground_points, patch_origin
from seamfree.diagnostics.seam_grid import find_seams
from seamfree.errors import ConfigError, NotFixableError
from seamfree.fix.replace import Fixability, fixability, replace_tile_dependent_norms
from seamfree.io.readers import open_image
from seamfree.layers.convert import convert_norm
from seamfree.models.describe import describe_model, resolve_activation, select_output
from seamfree.tiling.grid import as_axis_tuple
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.plan import PredictConfig
from seamfree.tiling.predict import predict, predict_whole
from seamfree.training.recalibrate import recalibrate_on_images

__all__ = ["FixConfig", "FixResult", "fix_model"]

logger = logging.getLogger(__name__)

# the most voxels of one image the fix holds in memory (larger images contribute a central region)
MAX_VOXELS = 1 << 24
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FixConfig:
    """Options of :func:`fix_model`.

    Attributes
    ----------
    iterations : int
        Training steps of the self-distillation (per-tile norms), the budget.
    patch_size : int or tuple, optional
        Training patch; default the model's recorded training patch, at least 128 (2D) / 64 (3D) per axis.
    batch_size : int
        Patches per step (BatchRenorm's batch statistics need a few).
    learning_rate : float
    agreement : float
        The Dice between the fixed and the original model's masks on held-out data the fix aims at (its stated
        tolerance); training stops early once reached at a check after two thirds of the budget.
    threshold : float
        Probability threshold of the masks.
    check_every : int
        Steps between agreement checks.
    seed : int
    device : str
    to : {"batchrenorm", "batch"}
        The layers a per-tile normalization becomes: BatchRenorm (default: training with small batches stays
        safe afterwards) or plain BatchNorm. Both use running statistics at inference, so both are exact.
    activation : {"auto", "none", "sigmoid", "softmax"}
        What turns the model's output into probabilities (auto: as ``predict`` decides; foreign models output
        logits, so pass sigmoid or softmax for them). The masks and the distillation loss follow it.
    """

    iterations: int = 600
    patch_size: int | tuple[int, ...] | None = None
    batch_size: int = 8
    learning_rate: float = 2e-3
    agreement: float = 0.97
    threshold: float = 0.5
    check_every: int = 100
    seed: int = 0
    device: str = "cpu"
    activation: str = "auto"
    to: str = "batchrenorm"

    def __post_init__(self) -> None:
        if self.to not in ("batchrenorm", "batch"):
            raise ConfigError(f"to must be 'batchrenorm' or 'batch' (norms with running statistics), got {self.to!r}")
        if self.activation not in ("auto", "none", "sigmoid", "softmax"):
            raise ConfigError(f"activation must be 'auto', 'none', 'sigmoid' or 'softmax', got {self.activation!r}")
        for name in ("iterations", "batch_size", "check_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.agreement <= 1.0:
            raise ConfigError(f"agreement must be a Dice in (0, 1], got {self.agreement!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")


@dataclass(frozen=True)
class Agreement:
    """The fixed model against the original on held-out data: masks' Dice, probabilities' largest and mean gap."""

    dice: float
    max_abs: float
    mean_abs: float
    held_out: str

    def to_dict(self) -> dict[str, Any]:
        return {"dice": self.dice, "max_abs": self.max_abs, "mean_abs": self.mean_abs, "held_out": self.held_out}


@dataclass(frozen=True)
class FixResult:
    """The fixed model and what the fix measured (before/after on held-out data)."""

    model: nn.Module
    method: str
    reason: str
    replaced: int
    agreement: Agreement | None
    target: float
    reached: bool
    iterations: int
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: what was done, the agreement with the original, exactness before → after."""
        if self.method == "none":
            return f"nothing to fix: {self.reason}"
        agree = "" if self.agreement is None else (
            f", agreement with the original Dice {self.agreement.dice:.3f} (target {self.target:g}"
            f"{'' if self.reached else ', NOT reached'}), max |Δp| {self.agreement.max_abs:.2g}")
        tiles = f", max |tiled − whole| {_fmt(self.before.get('tile_error'))} → {_fmt(self.after.get('tile_error'))}"
        gap = ""
        if self.before.get("ted_dice") is not None:
            gap = f", TED_dice {_fmt(self.before['ted_dice'])} → {_fmt(self.after.get('ted_dice'))}"
        return f"{self.method}: {self.reason}{agree}{tiles}{gap}, {self.seconds:.0f} s"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "reason": self.reason, "replaced": self.replaced,
                "agreement": None if self.agreement is None else self.agreement.to_dict(), "target": self.target,
                "reached": self.reached, "iterations": self.iterations, "before": self.before,
                "after": self.after, "seconds": self.seconds, "history": self.history, "summary": self.summary}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2g}"


def fix_model(model: nn.Module, images: Sequence[Any], *, config: FixConfig | None = None,
              ground_truth: Any = None, progress: Progress | None = None) -> FixResult:
    """Return ``model`` made seamless with the user's unlabeled ``images``, and the before/after measures.

    Parameters
    ----------
    model : nn.Module
        The trained model (not modified).
    images : sequence of path or array
        Unlabeled images of the kind the model is used on (``(C, *spatial)`` or spatial arrays, or files). With
        two or more, the last is held out to measure the agreement; with one, its last quarter along the last
        axis.
    config : FixConfig, optional
    ground_truth : array, optional
        A mask of the held-out image: the accuracy of both models against it is reported too.
    progress : callable, optional
        ``progress(stage, done, total)``.
    """
    config = config or FixConfig()
    if not images:
        raise ConfigError("fix_model needs at least one unlabeled image, got none")
    clock = time.perf_counter()
    found = fixability(model)
    if found.method == "not-fixable":
        raise NotFixableError(f"this model cannot be fixed by replacing normalization layers: {found.reason}")
    info = describe_model(model, probe=False)
    data = _Data.load(images, info.spatial_dims, info.in_channels)
    patch = _patch(model, config, info.spatial_dims, info.network_stride, data.smallest)
    teacher = [np.asarray(predict_whole(model, image, activation="none", output=info.output), np.float32)
               for image in data.raw]
    activation = resolve_activation(model, config.activation)
    before = _measures(model, data, teacher, activation, config, ground_truth, patch, info.output)
    if found.method == "none":
        return FixResult(model, "none", found.reason, 0, None, config.agreement, True, 0, before, before,
                         time.perf_counter() - clock)
    if found.method == "convert":
        # BatchNorm → BatchNorm is only a recalibration
        student = _full_renorm(convert_norm(model, "batchrenorm")) if config.to == "batchrenorm" \
            else copy.deepcopy(model)
        replaced = len(found.replaceable) if config.to == "batchrenorm" else 0
        history: list[dict[str, float]] = []
        iterations = 0
    else:
        options: dict[str, object] = {"momentum": 0.05}
        if config.to == "batchrenorm":
            options.update(warmup_steps=config.iterations // 5, ramp_steps=(3 * config.iterations) // 10)
        student, replaced = replace_tile_dependent_norms(model, info.spatial_dims, found.replaceable, options=options,
                                                         to=config.to)
        student, history, iterations = _distill(student, data, teacher, patch, activation, config, info.output,
                                                progress)
    masks = [_masks(_probabilities(t, activation), activation, config.threshold) for _, t in data.train_pairs(teacher)]
    recalibrate_on_images(student, data.train_images(), patch_size=patch, batch_size=config.batch_size,
                          batches=32, seed=config.seed, device=config.device, output=info.output, masks=masks,
                          foreground_fraction=_foreground_fraction(model))
    student.eval()
    agreement = _agreement(student, data, teacher, activation, config, info.output)
    after = _measures(student, data, teacher, activation, config, ground_truth, patch, info.output)
    reached = agreement.dice >= config.agreement
    if not reached:
        logger.warning("the fixed model agrees with the original at Dice %.3f on held-out data, below the target "
                       "%g: more --iterations, more or larger images, or accept the difference", agreement.dice,
                       config.agreement)
    return FixResult(student, found.method, found.reason, replaced, agreement, config.agreement, reached, iterations,
                     before, after, time.perf_counter() - clock, history)


def _full_renorm(model: nn.Module) -> nn.Module:
    """Every BatchRenorm layer past its warm-up and ramp: in training mode it corrects batch statistics to the
    running ones over the whole (r, d) range, so that a small batch behaves as inference does."""
    from seamfree.layers.batchrenorm import BatchRenormNd

    for layer in model.modules():
        if isinstance(layer, BatchRenormNd) and layer.num_batches_tracked is not None:
            layer.num_batches_tracked.fill_(layer.schedule.warmup_steps + layer.schedule.ramp_steps)
    return model


@dataclass
class _Data:
    """The images in memory (raw, as given) and normalized as prediction normalizes them, and the held-out part."""

    raw: list[np.ndarray]
    normalized: list[np.ndarray]
    held_out: str
    split: int | None  # one image: training uses it up to this index of the last axis

    @classmethod
    def load(cls, images: Sequence[Any], dims: int, in_channels: int) -> _Data:
        raw, normalized = [], []
        for image in images:
            source = open_image(image, spatial_dims=dims)
            try:
                window = _central(source.spatial_shape)
                region = source.read(window)
                if region.shape[0] != in_channels:
                    raise ConfigError(f"image {source.where} has {region.shape[0]} channel(s); the model takes "
                                      f"{in_channels}")
                statistics = compute_normalization(open_image(region, spatial_dims=dims), IntensityNormalization())
                raw.append(region)
                normalized.append(statistics.apply(region))
            finally:
                source.close()
        if len(raw) > 1:
            return cls(raw, normalized, f"image {len(raw) - 1} (the last)", None)
        split = (3 * raw[0].shape[-1]) // 4
        return cls(raw, normalized, "the last quarter of the image along its last axis", split)

    @property
    def smallest(self) -> tuple[int, ...]:
        spatial = [image.shape[1:] for image in self.train_images()]
        return tuple(min(s[a] for s in spatial) for a in range(len(spatial[0])))

    def train_images(self) -> list[np.ndarray]:
        if self.split is None:
            return self.raw[:-1]
        return [self.raw[0][..., :self.split]]

    def train_pairs(self, teacher: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.split is None:
            return list(zip(self.normalized[:-1], teacher[:-1]))
        return [(self.normalized[0][..., :self.split], teacher[0][..., :self.split])]

    def held_out_pair(self, teacher: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw, normalized, teacher logits) of the held-out data."""
        if self.split is None:
            return self.raw[-1], self.normalized[-1], teacher[-1]
        cut = (Ellipsis, slice(self.split, None))
        return self.raw[0][cut], self.normalized[0][cut], teacher[0][cut]


def _central(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The whole image, or a central region of at most :data:`MAX_VOXELS` voxels."""
    if math.prod(shape) <= MAX_VOXELS:
        return tuple(slice(0, n) for n in shape)
    side = int(MAX_VOXELS ** (1 / len(shape)))
    return tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side)) for n in shape)


def _patch(model: nn.Module, config: FixConfig, dims: int, stride: tuple[int, ...],
           smallest: tuple[int, ...]) -> tuple[int, ...]:
    """The training patch: given, else the recorded one, at least 128 (2D) / 64 (3D), a multiple of the stride."""
    if config.patch_size is not None:
        patch = as_axis_tuple(config.patch_size, dims, "patch_size")
    else:
        recorded = (getattr(model, "seamfree_metadata", {}) or {}).get("patch_size")
        floor = 128 if dims == 2 else 64
        base = as_axis_tuple(recorded, dims, "patch_size") if recorded else (floor,) * dims
        patch = tuple(max(b, floor) for b in base)
    patch = tuple(min(p, (n // s) * s) for p, n, s in zip(patch, smallest, stride))
    if any(p < s or p % s for p, s in zip(patch, stride)):
        raise ConfigError(f"patch_size {patch} must be a multiple of the network stride {stride} and fit the "
                          f"images (the smallest training region is {smallest}); pass another patch_size")
    return patch


def _loss(student: torch.Tensor, teacher: torch.Tensor, activation: str) -> torch.Tensor:
    """How far the student's logits are from the teacher's: soft cross-entropy for probabilities, else MSE."""
    if activation == "sigmoid":
        return nn.functional.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    if activation == "softmax":
        return -(torch.softmax(teacher, 1) * torch.log_softmax(student, 1)).sum(1).mean()
    return nn.functional.mse_loss(student, teacher)


def _distill(student: nn.Module, data: _Data, teacher: list[np.ndarray], patch: tuple[int, ...], activation: str,
             config: FixConfig, output: Any,
             progress: Progress | None) -> tuple[nn.Module, list[dict[str, float]], int]:
    """Train ``student`` to reproduce the teacher's whole-image logits on patches; keep the best checked state."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pairs = data.train_pairs(teacher)
    # patches drawn as the model was trained to see them: this share centred on what the teacher calls foreground
    fraction = _foreground_fraction(student)
    points = [foreground_points(_masks(_probabilities(t, activation), activation, config.threshold)) for _, t in pairs]
    margin = tuple(p // 8 for p in patch)  # the student sees no context beyond the patch: its rim is not judged
    interior = (slice(None), slice(None), *[slice(m, p - m) for m, p in zip(margin, patch)])
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations)
    device = torch.device(config.device)
    student.to(device)
    best_state, best_dice, history = copy.deepcopy(student.state_dict()), -1.0, []
    step = 0
    for step in range(1, config.iterations + 1):
        inputs, targets = _batch(pairs, patch, config.batch_size, rng, points, fraction)
        student.train()
        out = select_output(student(torch.from_numpy(inputs).to(device)), output)
        loss = _loss(out[interior], torch.from_numpy(targets).to(device)[interior], activation)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % config.check_every == 0 or step == config.iterations:
            student.eval()
            agreement = _agreement(student, data, teacher, activation, config, output)
            history.append({"iteration": step, "loss": float(loss.detach()), "dice": agreement.dice,
                            "max_abs": agreement.max_abs})
            logger.info("fix: step %d/%d, loss %.4f, held-out Dice to the original %.3f", step, config.iterations,
                        float(loss.detach()), agreement.dice)
            if agreement.dice > best_dice:
                best_state, best_dice = copy.deepcopy(student.state_dict()), agreement.dice
            if progress is not None:
                progress("distillation", step, config.iterations)
            if agreement.dice >= config.agreement and step >= (2 * config.iterations) // 3:
                break
    student.load_state_dict(best_state)
    return student.eval(), history, step


def _foreground_fraction(model: nn.Module) -> float:
    """The share of foreground-centred patches the model was trained with (its recorded value, else 0.5)."""
    training = ((getattr(model, "seamfree_metadata", {}) or {}).get("train_config") or {}).get("training") or {}
    value = training.get("foreground_fraction")
    return float(value) if isinstance(value, int | float) else 0.5


def _batch(pairs: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, ...], size: int,
           rng: np.random.Generator, points: list[np.ndarray] | None = None,
           fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = [], []
    for _ in range(size):
        k = int(rng.integers(len(pairs)))
        image, target = pairs[k]
        origin = patch_origin(rng, image.shape[1:], patch, points[k] if points else np.zeros((0, len(patch))),
                              fraction)
        window = (slice(None), *[slice(o, o + p) for o, p in zip(origin, patch)])
        inputs.append(image[window])
        targets.append(target[window])
    return np.stack(inputs).astype(np.float32), np.stack(targets).astype(np.float32)


def _probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    tensor = torch.from_numpy(np.asarray(logits, np.float32))
    if activation == "sigmoid":
        return torch.sigmoid(tensor).numpy()
    if activation == "softmax":
        return torch.softmax(tensor, 0).numpy()
    return tensor.numpy()


def _masks(probabilities: np.ndarray, activation: str, threshold: float) -> np.ndarray:
    if activation == "softmax" and probabilities.shape[0] > 1:
        return np.argmax(probabilities, axis=0) > 0
    return probabilities[0] > threshold


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _agreement(student: nn.Module, data: _Data, teacher: list[np.ndarray], activation: str, config: FixConfig,
               output: Any) -> Agreement:
    """The student's whole-image prediction of the held-out data against the teacher's."""
    raw, _, target = data.held_out_pair(teacher)
    logits = np.asarray(predict_whole(student, raw, activation="none", output=output), np.float32)
    mine, theirs = _probabilities(logits, activation), _probabilities(target, activation)
    gap = np.abs(mine - theirs)
    return Agreement(_dice(_masks(mine, activation, config.threshold), _masks(theirs, activation, config.threshold)),
                     float(gap.max()), float(gap.mean()), data.held_out)


def _measures(model: nn.Module, data: _Data, teacher: list[np.ndarray], activation: str, config: FixConfig,
              ground_truth: Any, patch: tuple[int, ...], output: Any) -> dict[str, Any]:
    """Exactness (max |tiled − whole| on the held-out data, core = the training patch), train/eval disparity and,
    with ground truth, Dice against it."""
    raw, normalized, _ = data.held_out_pair(teacher)
    whole = np.asarray(predict_whole(model, raw, activation=cast(Any, activation), output=output), np.float32)
    core = tuple(max(16, min(p, n // 2)) for p, n in zip(patch, raw.shape[1:]))
    tiled = np.asarray(predict(model, raw, config=PredictConfig(core=core, activation=cast(Any, activation),
                                                                model_output=output, tile_timing=False)))
    seams = find_seams(tiled, period=core, offset=0, kind="values", spatial_dims=len(core))
    result: dict[str, Any] = {"tile_error": float(np.abs(tiled - whole).max()), "tile_core": list(core),
                              "ted_dice": _train_eval_gap(model, normalized, patch, activation, config, output),
                              "seams": seams.summary, "seams_detected": seams.detected, "seams_z": seams.z}
    if ground_truth is not None:
        mask = np.asarray(ground_truth) > 0
        mask = mask.reshape(mask.shape[-len(patch):])
        if data.split is not None:
            mask = mask[..., data.split:]
        result["dice_ground_truth"] = _dice(_masks(whole, activation, config.threshold), mask)
    return result


def _train_eval_gap(model: nn.Module, normalized: np.ndarray, patch: tuple[int, ...], activation: str,
                    config: FixConfig, output: Any) -> float | None:
    """1 − Dice between train-mode and eval-mode masks on batches of 2 patches (TED_dice at batch 2), or None
    for a model whose layers behave the same in both modes."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    rng = np.random.default_rng(config.seed + 1)
    size = tuple(min(p, n) for p, n in zip(patch, normalized.shape[1:]))
    pairs = [(normalized, normalized)]
    train_copy = copy.deepcopy(model).train()
    values = []
    with torch.no_grad():
        for _ in range(8):
            inputs, _ = _batch(pairs, size, 2, rng)
            batch = torch.from_numpy(inputs)
            train_out = _probabilities(select_output(train_copy(batch), output).numpy().swapaxes(0, 1), activation)
            eval_out = _probabilities(select_output(model.eval()(batch), output).numpy().swapaxes(0, 1), activation)
            values.append(1.0 - _dice(_masks(train_out, activation, config.threshold),
                                      _masks(eval_out, activation, config.threshold)))
    return float(np.mean(values))


def describe_fixability(model: nn.Module) -> Fixability:
    """What :func:`fix_model` would do with ``model`` (the static audit only)."""
    return fixability(model)
