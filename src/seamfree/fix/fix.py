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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from seamfree.data.patches import foreground_points
from seamfree.errors import ConfigError, NotFixableError
from seamfree.fix.config import FixConfig
from seamfree.fix.data import FixData, draw_batch, foreground_fraction, training_patch
from seamfree.fix.measures import Agreement, held_out_agreement, masks_of, measures, probabilities
from seamfree.fix.replace import fixability, replace_tile_dependent_norms
from seamfree.layers.convert import convert_norm
from seamfree.models.describe import describe_model, resolve_activation, select_output
from seamfree.tiling.predict import predict_whole
from seamfree.training.recalibrate import recalibrate_on_images

__all__ = ["FixConfig", "FixResult", "fix_model"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


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
    data = FixData.load(images, info.spatial_dims, info.in_channels)
    patch = training_patch(model, config, info.spatial_dims, info.network_stride, data.smallest)
    teacher = [np.asarray(predict_whole(model, image, activation="none", output=info.output), np.float32)
               for image in data.raw]
    activation = resolve_activation(model, config.activation)
    before = measures(model, data, teacher, activation, config, ground_truth, patch, info.output)
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
    masks = [masks_of(probabilities(t, activation), activation, config.threshold) for _, t in data.train_pairs(teacher)]
    recalibrate_on_images(student, data.train_images(), patch_size=patch, batch_size=config.batch_size,
                          batches=32, seed=config.seed, device=config.device, output=info.output, masks=masks,
                          foreground_fraction=foreground_fraction(model))
    student.eval()
    agreement = held_out_agreement(student, data, teacher, activation, config, info.output)
    after = measures(student, data, teacher, activation, config, ground_truth, patch, info.output)
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


def _loss(student: torch.Tensor, teacher: torch.Tensor, activation: str) -> torch.Tensor:
    """How far the student's logits are from the teacher's: soft cross-entropy for probabilities, else MSE."""
    if activation == "sigmoid":
        return nn.functional.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    if activation == "softmax":
        return -(torch.softmax(teacher, 1) * torch.log_softmax(student, 1)).sum(1).mean()
    return nn.functional.mse_loss(student, teacher)


def _distill(student: nn.Module, data: FixData, teacher: list[np.ndarray], patch: tuple[int, ...], activation: str,
             config: FixConfig, output: Any,
             progress: Progress | None) -> tuple[nn.Module, list[dict[str, float]], int]:
    """Train ``student`` to reproduce the teacher's whole-image logits on patches; keep the best checked state."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pairs = data.train_pairs(teacher)
    # patches drawn as the model was trained to see them: this share centred on what the teacher calls foreground
    fraction = foreground_fraction(student)
    points = [foreground_points(masks_of(probabilities(t, activation), activation, config.threshold)) for _, t in pairs]
    margin = tuple(p // 8 for p in patch)  # the student sees no context beyond the patch: its rim is not judged
    interior = (slice(None), slice(None), *[slice(m, p - m) for m, p in zip(margin, patch)])
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations)
    device = torch.device(config.device)
    student.to(device)
    best_state, best_dice, history = copy.deepcopy(student.state_dict()), -1.0, []
    step = 0
    for step in range(1, config.iterations + 1):
        inputs, targets = draw_batch(pairs, patch, config.batch_size, rng, points, fraction)
        student.train()
        out = select_output(student(torch.from_numpy(inputs).to(device)), output)
        loss = _loss(out[interior], torch.from_numpy(targets).to(device)[interior], activation)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % config.check_every == 0 or step == config.iterations:
            student.eval()
            agreement = held_out_agreement(student, data, teacher, activation, config, output)
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


