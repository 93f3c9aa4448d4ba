"""The training loop: ``train(config)``.

Patches are sampled from whole (large) images, augmented, and fed to the network with the configured
normalization; validation predicts whole validation images **tiled, through seamfree.predict**, so the
validation Dice is what users get. The output directory holds::

    config.yaml        the resolved configuration
    last.pt, best.pt   seamfree checkpoints (config + metadata: patch size, batch size, iteration, Dice)
    state.pt           optimizer, scheduler and random-generator states for resuming
    log.csv, log.jsonl one row per step (loss, learning rate, BatchRenorm r_max/d_max, seconds)

Resuming (``resume=True``) continues from ``state.pt`` and ends where an uninterrupted run with the same
seed ends: the generators, optimizer and schedule are restored exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from seamfree.data.sources import Pair, load_pairs
from seamfree.errors import CheckpointError, ConfigError
from seamfree.io.readers import open_image
from seamfree.layers.batchrenorm import DEFAULT_MOMENTUM, BatchRenormNd
from seamfree.layers.convert import convert_norm
from seamfree.metrics import dice
from seamfree.models.checkpoint import check_device, load_model, save_model
from seamfree.models.unet import UNet
from seamfree.models.vit import ViTSegmenter
from seamfree.tiling.normalize import IntensityNormalization, compute_normalization
from seamfree.tiling.plan import PredictConfig
from seamfree.tiling.predict import predict
from seamfree.training.augment import augment_batch
from seamfree.training.config import TrainConfig, config_to_dict
from seamfree.training.losses import get_loss
from seamfree.training.sampler import PatchSampler

__all__ = ["TrainResult", "build_training_model", "train"]

logger = logging.getLogger(__name__)

# e-folding times of the running statistics before BatchRenorm's corrections start: (1 − m)^(3/m) ≈ e^-3, about
# 5 % of their initial values (mean 0, variance 1) left.
SETTLING_FOLDS = 3.0


def settling_steps(momentum: float | None, iterations: int) -> int:
    """Return the steps the running statistics of ``momentum`` take to forget their start (3/momentum).

    ``momentum=None`` (a cumulative average) forgets its start at the first batch; it is given a tenth of the run,
    the old default, so that the weights have moved less when corrections begin.
    """
    if momentum is None:
        return int(0.1 * iterations)
    return math.ceil(SETTLING_FOLDS / float(momentum))


@dataclass(frozen=True)
class TrainResult:
    """Where a training run wrote its results, and how it ended."""

    output: Path
    last: Path
    best: Path
    iterations: int
    best_dice: float | None
    final_dice: float | None
    seconds: float


def _renorm_options(config: TrainConfig) -> dict[str, Any]:
    """Return the BatchRenorm layer options of a run: the warm-up tied to the running momentum by default.

    ``renorm_warmup: auto`` is 3/momentum steps (the running statistics' settling time), at most half the run.
    A warm-up set by hand (a fraction, or ``norm_options.warmup_steps``) shorter than that is warned about with
    the share of the initial statistics it leaves in the running ones when corrections start.
    """
    options = dict(config.model.norm_options)
    if config.model.norm != "batchrenorm":
        return options
    training = config.training
    iterations = training.iterations
    momentum = options.get("momentum", DEFAULT_MOMENTUM)
    settle = settling_steps(momentum, iterations)
    by_hand = "warmup_steps" in options or training.renorm_warmup != "auto"
    if "warmup_steps" not in options:
        options["warmup_steps"] = (min(settle, iterations // 2) if training.renorm_warmup == "auto"
                                   else int(float(training.renorm_warmup) * iterations))
    options.setdefault("ramp_steps", int(training.renorm_ramp * iterations))
    warmup = options["warmup_steps"]
    if momentum is not None and warmup < settle:
        left = (1.0 - float(momentum)) ** warmup
        advice = ("use training.renorm_warmup: auto (3/momentum steps) or a larger norm_options.momentum"
                  if by_hand else f"the run has {iterations} iterations: give norm_options.momentum >= "
                  f"{SETTLING_FOLDS * 2 / iterations:.3g} or more iterations")
        logger.warning(
            "BatchRenorm warm-up of %d steps is shorter than the running statistics' settling time at momentum "
            "%g (3/momentum = %d steps): %.0f %% of their initial values (mean 0, variance 1) are still in them "
            "when the r/d corrections start; %s", warmup, momentum, settle, 100 * left, advice)
    return options


def _conversion_options(config: TrainConfig) -> dict[str, Any]:
    """Return the options of converted layers: BatchRenorm skips its warm-up and ramps over this fine-tuning.

    The layer defaults (1000 warm-up and 4000 ramp steps) are for training from scratch; after a 100-step
    fine-tuning r_max would still be ~1.05, i.e. plain BatchNorm, the failure mode conversion is meant to fix.
    """
    options = dict(config.model.norm_options)
    if config.model.convert_norm == "batchrenorm":
        options.setdefault("warmup_steps", 0)
        options.setdefault("ramp_steps", max(1, int(config.training.renorm_ramp * config.training.iterations)))
    return options


def build_training_model(config: TrainConfig) -> nn.Module:
    """Return the network to train: a new one from ``config.model``, or its checkpoint (converted, frozen)."""
    m = config.model
    if m.checkpoint:
        model = load_model(m.checkpoint)
        if m.convert_norm:
            model = convert_norm(model, to=m.convert_norm, options=_conversion_options(config))
    elif m.architecture == "vit":
        patch = config.training.patch_size
        model = ViTSegmenter(m.in_channels, m.out_channels, img_size=patch[-1], features=m.features, norm=m.norm,
                             norm_options=_renorm_options(config))
    else:
        kwargs: dict[str, Any] = {}
        if m.scale_factors is not None:
            kwargs["scale_factors"] = [tuple(f) for f in m.scale_factors]
        model = UNet(m.spatial_dims, m.in_channels, m.out_channels, depth=m.depth, features=m.features, norm=m.norm,
                     norm_options=_renorm_options(config), **kwargs)
    if m.freeze_encoder:
        frozen = [p for name, p in model.named_parameters() if name.startswith(("encoders.", "embed", "blocks."))]
        if not frozen:
            raise ConfigError(f"model.freeze_encoder: {type(model).__name__} has no encoder parameters to freeze")
        for parameter in frozen:
            parameter.requires_grad_(False)
    return model


def _check_patch(model: nn.Module, patch: tuple[int, ...], dims: int) -> None:
    stride = tuple(model.network_stride)  # type: ignore[arg-type]  # seamfree models say their stride
    if len(patch) != dims:
        raise ConfigError(f"training.patch_size {patch} needs {dims} values for a {dims}D model")
    bad = [p for p, s in zip(patch, stride) if p % s]
    if bad:
        fixed = tuple(max(s, p // s * s) for p, s in zip(patch, stride))
        raise ConfigError(f"training.patch_size {patch} is not divisible by the network stride {stride}; use "
                          f"patch_size {fixed}")


def _normalized(pairs: list[Pair], dims: int) -> list[Pair]:
    out = []
    for image, mask in pairs:
        with open_image(image, spatial_dims=dims) as source:
            norm = compute_normalization(source, IntensityNormalization())
        out.append((norm.apply(image), mask))
    return out


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    iterations = config.training.iterations
    if config.training.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, iterations) / iterations)))
    if config.training.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _renorm_bounds(model: nn.Module) -> tuple[float, float]:
    for module in model.modules():
        if isinstance(module, BatchRenormNd):
            r_max, d_max = module.current_bounds()
            return float(r_max), float(d_max)
    return 1.0, 0.0


def validate(model: nn.Module, pairs: list[Pair], config: TrainConfig) -> float | None:
    """Return the mean Dice of tiled eval-mode predictions of the validation images (None without any)."""
    if not pairs:
        return None
    core = config.training.val_core
    predict_config = PredictConfig(core=core, device=config.training.device, tiles_per_batch=1 if core else None)
    scores = []
    for image, mask in pairs:
        probabilities = predict(model, image, config=predict_config)
        predicted = probabilities > 0.5
        scores.append(float(np.mean([dice(predicted[c], mask[c] > 0) for c in range(mask.shape[0])])))
    return float(np.mean(scores))


class _Log:
    """Per-step rows appended to log.csv and log.jsonl (a resumed run truncates rows past its checkpoint)."""

    fields = ("step", "loss", "lr", "r_max", "d_max", "val_dice", "seconds")

    def __init__(self, out: Path, resume_step: int) -> None:
        self.csv_path, self.json_path = out / "log.csv", out / "log.jsonl"
        rows = []
        if resume_step and self.json_path.exists():
            rows = [json.loads(line) for line in self.json_path.read_text().splitlines() if line.strip()]
            rows = [r for r in rows if r["step"] <= resume_step]
        self.csv_path.write_text(",".join(self.fields) + "\n")
        self.json_path.write_text("")
        for row in rows:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])
        with self.json_path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _metadata(config: TrainConfig, step: int, val_dice: float | None, best_dice: float | None) -> dict[str, Any]:
    return {"patch_size": list(config.training.patch_size), "batch_size": config.training.batch_size,
            "iteration": step, "iterations": config.training.iterations, "val_dice": val_dice,
            "best_val_dice": best_dice, "data_source": config.data.source, "target": config.data.target,
            "intensity_normalization": "percentile", "train_config": config_to_dict(config)}


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                rng: np.random.Generator, best: float | None) -> None:
    payload = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "numpy_rng": rng.bit_generator.state,
               "torch_rng": torch.get_rng_state(), "best_dice": best}
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:  # an unwritable folder is an OSError here, with its errno
        torch.save(payload, handle)
    partial.replace(path)


def _load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                rng: np.random.Generator) -> tuple[int, float | None]:
    try:
        # weights_only: a state.pt planted in a shared output folder cannot run code when a run resumes
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}; delete it to start over") from exc
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        rng.bit_generator.state = payload["numpy_rng"]
        torch.set_rng_state(payload["torch_rng"])
        return int(payload["step"]), payload["best_dice"]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot resume from {path}: it was saved by another model or optimizer configuration ({first}); "
            "resume with the settings of that run, or start a new one (--overwrite replaces it)") from exc


def _check_output_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the training output {str(out)!r} is a file, not a folder; choose another output")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not (resume or overwrite):
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(
            f"the training output folder {str(out)!r} is not empty ({shown}); pass resume (CLI --resume) to continue "
            "that run, overwrite (CLI --overwrite) to replace its checkpoints and logs, or choose another output"
        )
    if entries and resume and not overwrite and "state.pt" not in entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(
            f"cannot resume in {str(out)!r}: it holds {shown} but no state.pt, the training state a resume "
            "continues from (a run that never saved one, or not a seamfree training folder); nothing was changed. "
            "Train into another folder, or pass overwrite (CLI --overwrite) to start a new run there that replaces "
            "its checkpoints and logs")


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the model described by ``config``; return where the checkpoints are and the validation Dice.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``state.pt`` in the output directory if it exists.
    overwrite : bool
        Train into an output directory that is not empty, replacing its checkpoints and logs. Without it (or
        ``resume``) a non-empty output directory is a ConfigError: a new run never silently replaces a
        ``best.pt``.
    progress : bool
        Show a tqdm progress bar.
    on_step : callable, optional
        Called with (step, log row) after every step (tests use it to interrupt a run).
    """
    started = time.perf_counter()
    t = config.training
    check_device(t.device)  # before anything is written
    out = Path(config.output)
    _check_output_folder(out, resume=resume, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = build_training_model(config).to(t.device)
    dims = int(model.spatial_dims)  # type: ignore[arg-type]
    _check_patch(model, tuple(t.patch_size), dims)
    train_pairs, val_pairs = load_pairs(config.data, dims)
    sampler = PatchSampler(_normalized(train_pairs, dims), tuple(t.patch_size), t.batch_size,
                           foreground_fraction=t.foreground_fraction, min_foreground=t.min_foreground, rng=rng)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                                  weight_decay=t.weight_decay)
    scheduler = _scheduler(optimizer, config)
    loss_fn = get_loss(t.loss)
    step, best = 0, None
    state_path = out / "state.pt"
    if resume and state_path.exists():  # before anything is written: a refused resume leaves the run as it was
        step, best = _load_state(state_path, model, optimizer, scheduler, rng)
        logger.info("resuming %s at step %d", out, step)
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    log = _Log(out, step)
    checkpoint_every = t.checkpoint_every or t.validate_every
    bar = _bar(progress, t.iterations, step)
    use_amp = t.amp and t.device.startswith("cuda")
    val_dice = None
    model.train()
    while step < t.iterations:
        tick = time.perf_counter()
        x, y = augment_batch(*sampler.batch(), t.augment, rng)
        inputs, targets = torch.from_numpy(x).to(t.device), torch.from_numpy(y).to(t.device)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model(inputs), targets)
        if not torch.isfinite(loss):
            raise ConfigError(f"the loss became {loss.item()} at step {step + 1}; lower training.learning_rate "
                              f"(now {t.learning_rate}) or check the data for NaN")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        r_max, d_max = _renorm_bounds(model)
        row: dict[str, Any] = {"step": step, "loss": float(loss.item()), "lr": optimizer.param_groups[0]["lr"],
                               "r_max": r_max, "d_max": d_max, "seconds": round(time.perf_counter() - tick, 4)}
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
        if step % t.validate_every == 0 or step == t.iterations:
            val_dice = validate(model, val_pairs, config)
            model.train()
            row["val_dice"] = val_dice
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and val_dice is not None:
                scheduler.step(val_dice)
            if val_dice is not None and (best is None or val_dice > best):
                best = val_dice
                save_model(model, out / "best.pt", metadata=_metadata(config, step, val_dice, best))
        log.write(row)
        if step % checkpoint_every == 0 or step == t.iterations:
            save_model(model, out / "last.pt", metadata=_metadata(config, step, val_dice, best))
            _save_state(state_path, model, optimizer, scheduler, step, rng, best)
        bar(row)
        if on_step is not None:
            on_step(step, row)
    bar(None)
    if best is None:  # no validation images: the last model is the best we know
        save_model(model, out / "best.pt", metadata=_metadata(config, step, None, None))
    model.eval()
    return TrainResult(out, out / "last.pt", out / "best.pt", step, best, val_dice, time.perf_counter() - started)


def _bar(progress: bool, total: int, initial: int) -> Callable[[dict[str, Any] | None], None]:
    if not progress:
        return lambda row: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", desc="train")

    def update(row: dict[str, Any] | None) -> None:
        if row is None:
            bar.close()
            return
        bar.set_postfix(loss=f"{row['loss']:.3f}", **({"val_dice": f"{row['val_dice']:.3f}"}
                                                       if row.get("val_dice") is not None else {}))
        bar.update(1)
    return update

