"""Training configuration: YAML → frozen dataclasses, unknown keys rejected, CLI overrides.

A configuration file has four sections (every key optional; see ``examples/train.yaml``)::

    data:      where the images and masks come from (synthetic, a named dataset, or files)
    model:     architecture, normalization, optional checkpoint to fine-tune
    training:  iterations, batch and patch size, optimizer, loss, augmentation, seeds, device
    output:    directory for checkpoints, logs and the resolved configuration

Overrides use dotted keys, ``training.batch_size=2`` (the value is parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seamfree.errors import ConfigError
from seamfree.layers.factory import NORM_NAMES

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
class DataConfig:
    """Training data.

    Attributes
    ----------
    source : str
        "synthetic", "files", or a dataset name (``seamfree data list``).
    target : str, optional
        What to segment for datasets with several targets (e.g. drosophila-vnc: membranes, mitochondria).
    subset : str, optional
        Dataset subset (coelho2009: gnf, ic100).
    synthetic_kind : {"nuclei", "membranes"}
    synthetic_shape : tuple of int
        Spatial shape of each synthetic image.
    synthetic_train, synthetic_val : int
        Number of synthetic training and validation images.
    synthetic_options : dict
        Further :class:`seamfree.data.synthetic.SyntheticSpec` fields.
    images, masks, val_images, val_masks : tuple of str
        Files for ``source: files``.
    limit : int, optional
        Use at most this many training images (small-data experiments, fine-tuning).
    seed : int
        Seed of synthetic images.
    """

    source: str = "synthetic"
    target: str | None = None
    subset: str | None = None
    synthetic_kind: Literal["nuclei", "membranes"] = "nuclei"
    synthetic_shape: tuple[int, ...] = (256, 256)
    synthetic_train: int = 4
    synthetic_val: int = 1
    synthetic_options: dict[str, Any] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()
    val_images: tuple[str, ...] = ()
    val_masks: tuple[str, ...] = ()
    limit: int | None = None
    seed: int = 0


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
        if self.norm not in NORM_NAMES:
            close = difflib.get_close_matches(self.norm, NORM_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model.norm {self.norm!r} is not a known normalization {NORM_NAMES}{hint}")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"model.spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.architecture == "vit" and self.spatial_dims != 2:
            raise ConfigError("model.architecture 'vit' is 2D only; use spatial_dims: 2 or architecture: unet")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentations applied to each training patch (each can be switched off)."""

    flips: bool = True
    rot90: bool = True
    intensity: float = 0.1
    gamma: float = 0.3
    noise: float = 0.03
    blur: float = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    """The optimization.

    ``renorm_warmup`` and ``renorm_ramp`` are fractions of ``iterations`` (BatchRenorm: plain BatchNorm during
    the warm-up, then r_max/d_max ramped to 3/5); explicit ``norm_options`` in the model section win.
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
    renorm_warmup: float = 0.1
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
        if not (0 <= self.renorm_warmup <= 1 and 0 <= self.renorm_ramp <= 1):
            raise ConfigError(f"renorm_warmup and renorm_ramp are fractions of the iterations in [0, 1], got "
                              f"{self.renorm_warmup} and {self.renorm_ramp}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: str = "runs/train"


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` (dataclasses, tuples, scalars); raise ConfigError if it can't."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of its options, got {value!r}")
        return from_mapping(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], where)
    if origin is tuple:
        args = typing.get_args(annotation)
        items = value if isinstance(value, list | tuple) else [value]
        inner = args[0] if args else Any
        return tuple(_convert(v, inner, where) for v in items)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{where} must be one of {typing.get_args(annotation)}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (annotation is int and value != int(value)):
            raise ConfigError(f"{where} must be a number ({annotation.__name__}), got {value!r}")
        return annotation(value)
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def from_mapping(cls: Any, values: dict[str, Any], where: str = "") -> Any:
    """Return the frozen dataclass ``cls`` built from ``values`` (nested mappings, lists → tuples).

    Unknown keys raise ConfigError with a did-you-mean; ``where`` prefixes key names in messages.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown configuration key {where + '.' if where else ''}{key}{hint}")
    kwargs = {key: _convert(value, hints[key], f"{where}.{key}" if where else key) for key, value in values.items()}
    return cls(**kwargs)


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``values[a][b] = value`` for ``dotted`` = "a.b", creating sections as needed."""
    parts = dotted.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def read_mapping(path: str | Path, *, what: str, example: str, sections: str) -> dict[str, Any]:
    """Return the mapping held by the YAML file ``path``; ConfigError naming ``example`` if it is missing or not one."""
    import yaml

    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{what} {file} does not exist; see {example} for one")
    loaded = yaml.safe_load(file.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file} must hold a mapping of sections ({sections}), got {type(loaded).__name__}")
    return loaded


def apply_overrides(values: dict[str, Any], overrides: list[str] | None, *, example: str) -> None:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to ``values`` in place."""
    import yaml

    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value, e.g. {example}")
        key, _, text = override.partition("=")
        _set_dotted(values, key.strip(), yaml.safe_load(text))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Return the TrainConfig of a YAML file (or ``base`` dict) with ``key.sub=value`` overrides applied."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        values.update(read_mapping(path, what="configuration file", example="examples/train.yaml",
                                   sections="data, model, training, output"))
    apply_overrides(values, overrides, example="training.batch_size=2")
    return from_mapping(TrainConfig, values, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a plain dict (lists instead of tuples) of a configuration dataclass, ready for YAML/JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(config)))
