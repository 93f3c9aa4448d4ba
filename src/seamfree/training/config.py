"""Training configuration: YAML → frozen dataclasses, unknown keys rejected, CLI overrides.

A configuration file has four sections (every key optional; see ``examples/train.yaml``)::

    data:      where the images and masks come from (synthetic, a named dataset, or files)
    model:     architecture, normalization, optional checkpoint to fine-tune
    training:  iterations, batch and patch size, optimizer, loss, augmentation, seeds, device
    output:    directory for checkpoints, logs and the resolved configuration

Overrides use dotted keys, ``training.batch_size=2`` (the value is parsed as YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seamfree.config import apply_overrides, config_to_dict, from_mapping, read_mapping
from seamfree.data.config import DataConfig
from seamfree.errors import ConfigError
from seamfree.layers.registry import check_norm_name

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_to_dict",
    "from_mapping",
    "load_config",
    "read_mapping",
]


@dataclass(frozen=True)
class ModelConfig:
    """The network: a new U-Net/ViT, or a checkpoint to fine-tune (optionally converted)."""

    architecture: Literal["unet", "vit"] = "unet"
    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 1
    depth: int = 3
    features: int = 16
    norm: str = "batchrenorm"
    norm_options: dict[str, Any] = field(default_factory=dict)
    scale_factors: tuple[tuple[int, ...], ...] | None = None
    checkpoint: str | None = None
    convert_norm: str | None = None
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        check_norm_name(self.norm, where="model.norm")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"model.spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.architecture == "vit" and self.spatial_dims != 2:
            raise ConfigError("model.architecture 'vit' is 2D only; use spatial_dims: 2 or architecture: unet")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentations applied to each training patch (each can be switched off).

    ``intensity`` scales and shifts (contrast), ``gamma`` bends the patch's range, ``background`` adds a smooth
    random offset up to that value (haze, uneven illumination), ``noise`` and ``blur`` as named. Values are in
    units of the normalized image (percentiles 1 and 99.8 map to 0 and 1).
    """

    flips: bool = True
    rot90: bool = True
    intensity: float = 0.1
    gamma: float = 0.3
    background: float = 0.0
    noise: float = 0.03
    blur: float = 0.0

    def __post_init__(self) -> None:
        for name in ("intensity", "gamma", "background", "noise", "blur"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.gamma >= 1:
            raise ConfigError(f"augment.gamma must be below 1 (gamma in [1 - g, 1 + g]), got {self.gamma}")


@dataclass(frozen=True)
class TrainingConfig:
    """The optimization.

    BatchRenorm: plain BatchNorm during the warm-up, then r_max/d_max ramped to 3/5 over ``renorm_ramp`` (a
    fraction of ``iterations``). ``renorm_warmup`` is "auto" (3/momentum steps, the running statistics' settling
    time, at most half the run: chosen by ``benchmarks/renorm_schedule.py``, see docs/training.md) or a fraction
    of ``iterations``; explicit ``norm_options`` in the model section win.
    """

    iterations: int = 2000
    batch_size: int = 4
    patch_size: tuple[int, ...] = (128, 128)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    loss: Literal["dice", "bce", "dice_bce"] = "dice_bce"
    foreground_fraction: float = 0.5
    min_foreground: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    renorm_warmup: Literal["auto"] | float = "auto"
    renorm_ramp: float = 0.4
    validate_every: int = 500
    checkpoint_every: int | None = None
    val_core: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.validate_every < 1:
            raise ConfigError(f"iterations, batch_size and validate_every must be >= 1, got {self.iterations}, "
                              f"{self.batch_size}, {self.validate_every}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        warmup_ok = self.renorm_warmup == "auto" or (not isinstance(self.renorm_warmup, str)
                                                     and 0 <= self.renorm_warmup <= 1)
        if not (warmup_ok and 0 <= self.renorm_ramp <= 1):
            raise ConfigError(f"renorm_warmup ('auto' or a fraction) and renorm_ramp are fractions of the iterations "
                              f"in [0, 1], got {self.renorm_warmup!r} and {self.renorm_ramp!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: str = "runs/train"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Return the TrainConfig of a YAML file (or ``base`` dict) with ``key.sub=value`` overrides applied."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        values.update(read_mapping(path, what="configuration file", example="examples/train.yaml",
                                   sections="data, model, training, output"))
    apply_overrides(values, overrides, example="training.batch_size=2")
    return from_mapping(TrainConfig, values, "")


