"""The study's configuration: a profile (quick, standard, full) with optional YAML and ``key=value`` overrides.

A study configuration has these sections (see ``examples/study.yaml``)::

    grid:        datasets × norms × training batch sizes × seeds, one 2D U-Net recipe
    training:    the recipe shared by every grid run (iterations, patch, width, learning rate, BatchRenorm schedule)
    evaluation:  test images per dataset, the diagnosis core, the small core, TED batches
    vit:         ViT-based rows (one dataset; norms × batch sizes)
    volume:      the 3D experiment on the drosophila-vnc stack (anisotropic U-Net)
    samples:     the equal-samples arm (batch 1 at 8× the iterations, a learning-rate sweep)
    transfer:    source → target pairs (coelho2009 gnf → ic100, isbi2012 → drosophila-vnc membranes): zero-shot,
                 recalibration, fine-tuning on k images, conversion, from scratch; Dice vs k with seeds

Profiles are complete configurations; a YAML file and overrides change only the keys they name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seamfree.config import apply_overrides, from_mapping, read_mapping
from seamfree.errors import ConfigError
from seamfree.layers.registry import check_norm_name

__all__ = [
    "PROFILES",
    "TRANSFER_STAGES",
    "EqualSamplesConfig",
    "EvaluationConfig",
    "GridConfig",
    "Recipe",
    "StudyConfig",
    "StudyDataset",
    "TransferConfig",
    "TransferPair",
    "ViTConfig",
    "VolumeConfig",
    "load_study_config",
]


@dataclass(frozen=True)
class StudyDataset:
    """A dataset of the study: a name from ``seamfree data list`` (or "synthetic"), with target or subset."""

    name: str
    target: str | None = None
    subset: str | None = None

    @property
    def label(self) -> str:
        """Return the short name used in run names and tables, e.g. ``drosophila-vnc-mitochondria``."""
        suffix = self.target or self.subset
        return f"{self.name}-{suffix}" if suffix else self.name


@dataclass(frozen=True)
class Recipe:
    """How a network of the study is trained; identical for every norm and batch size it is used with.

    ``renorm_warmup`` is "auto" (3/momentum steps, see docs/training.md) or a fraction of the iterations,
    ``renorm_ramp`` a fraction; ``running_momentum`` is the running-
    statistics momentum of every norm layer that keeps running statistics (BatchNorm, BatchRenorm, tracked
    InstanceNorm), so that the norms differ only in how they normalize.
    """

    iterations: int = 500
    patch_size: tuple[int, ...] = (128, 128)
    depth: int = 3
    features: int = 8
    scale_factors: tuple[tuple[int, ...], ...] | None = None
    learning_rate: float = 2e-3
    renorm_warmup: Literal["auto"] | float = "auto"
    renorm_ramp: float = 0.3
    running_momentum: float = 0.05
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.features < 1 or self.depth < 1:
            raise ConfigError(f"iterations, features and depth must be >= 1, got {self.iterations}, "
                              f"{self.features}, {self.depth}")
        if not 0 < self.running_momentum <= 1:
            raise ConfigError(f"running_momentum must lie in (0, 1], got {self.running_momentum}")


@dataclass(frozen=True)
class GridConfig:
    """The main grid: every dataset × norm × batch size × seed, trained with the one 2D U-Net recipe."""

    datasets: tuple[StudyDataset, ...] = ()
    norms: tuple[str, ...] = ("batch", "batchrenorm", "instance", "instance_tracked", "group", "none")
    batch_sizes: tuple[int, ...] = (1, 8)
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        _check_norms(self.norms, "grid.norms")
        _check_batch_sizes(self.batch_sizes, "grid.batch_sizes")


@dataclass(frozen=True)
class EvaluationConfig:
    """How each trained model is measured on the test split.

    Attributes
    ----------
    test_images : int
        At most this many test images per dataset (in split order).
    core : int or tuple
        Core of the diagnosis grid (Dice, TM, seam score, exactness).
    small_core : int or tuple, optional
        A smaller core, to show how artifacts grow as tiles shrink; default half the training patch.
    ted_batches : int, optional
        Training-like batches for TED, per test image; default enough for 32 patches, at least 8
        (:func:`~seamfree.diagnostics.disparity.ted_batch_count`).
    vit_halo : int
        Halo of ViT tiles (self-attention has no finite receptive field to measure).
    measurement_batches : tuple of int
        TED also measured at these batch sizes (of 1, 2, 4, 8), for models with running statistics: with the
        training batch size, a 2-D table that separates the two; BatchRenorm's r/d clip rate beside it.
    blend_overlaps, blend_norms, blend_images : tuple, tuple, int
        The stitching arm: for models of ``blend_norms``, crop stitching against Gaussian blending at each core
        overlap (of 0.25, 0.5) on the first ``blend_images`` test images (:mod:`seamfree.study.arms`).
    """

    test_images: int = 2
    core: int | tuple[int, ...] = 256
    small_core: int | tuple[int, ...] | None = None
    ted_batches: int | None = None
    vit_halo: int = 32
    measurement_batches: tuple[int, ...] = ()
    blend_overlaps: tuple[float, ...] = ()
    blend_norms: tuple[str, ...] = ("batch", "instance")
    blend_images: int = 2

    def __post_init__(self) -> None:
        from seamfree.study.arms import BLEND_OVERLAPS, MEASUREMENT_BATCHES

        if self.test_images < 1 or (self.ted_batches is not None and self.ted_batches < 1) or self.blend_images < 1:
            raise ConfigError(f"test_images, ted_batches and blend_images must be >= 1, got {self.test_images}, "
                              f"{self.ted_batches}, {self.blend_images}")
        if not set(self.measurement_batches) <= set(MEASUREMENT_BATCHES):
            raise ConfigError(f"evaluation.measurement_batches must be among {list(MEASUREMENT_BATCHES)}, got "
                              f"{list(self.measurement_batches)}")
        if not set(self.blend_overlaps) <= set(BLEND_OVERLAPS):
            raise ConfigError(f"evaluation.blend_overlaps must be among {list(BLEND_OVERLAPS)}, got "
                              f"{list(self.blend_overlaps)}")
        _check_norms(self.blend_norms, "evaluation.blend_norms")


@dataclass(frozen=True)
class ViTConfig:
    """ViT-based rows: the same dataset handling, a UNETR-like network whose decoder norm varies."""

    dataset: StudyDataset | None = None
    norms: tuple[str, ...] = ("batch", "batchrenorm", "layer")
    batch_sizes: tuple[int, ...] = (8,)
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        _check_norms(self.norms, "vit.norms")
        _check_batch_sizes(self.batch_sizes, "vit.batch_sizes")


@dataclass(frozen=True)
class VolumeConfig:
    """The 3D experiment: an anisotropic 3D U-Net on the drosophila-vnc stack (sub-stacks as splits).

    The test sub-stack is measured on its central ``region``: with 4 sections, every tile carries a z halo
    several times its core, so whole 1024² sections would cost minutes per model on a CPU.
    """

    enabled: bool = False
    target: str = "mitochondria"
    norms: tuple[str, ...] = ("batch", "batchrenorm", "instance")
    batch_sizes: tuple[int, ...] = (2,)
    recipe: Recipe = field(default_factory=lambda: Recipe(
        iterations=200, patch_size=(4, 128, 128), scale_factors=((1, 2, 2), (1, 2, 2), (1, 2, 2))))
    core: tuple[int, ...] = (4, 256, 256)
    small_core: tuple[int, ...] = (4, 128, 128)
    region: tuple[int, ...] = (4, 512, 512)

    def __post_init__(self) -> None:
        _check_norms(self.norms, "volume.norms")
        _check_batch_sizes(self.batch_sizes, "volume.batch_sizes")


@dataclass(frozen=True)
class TransferPair:
    """A source dataset the models are trained on and a target dataset they are transferred to."""

    source: StudyDataset
    target: StudyDataset

    @property
    def label(self) -> str:
        return f"{self.source.label}-to-{self.target.label}"


TRANSFER_STAGES = ("zero-shot", "recalibrate", "recalibrate-label-free", "finetune", "convert", "recalibrate-finetune",
                   "scratch")


def _coelho_pair() -> tuple[TransferPair, ...]:
    return (TransferPair(StudyDataset("coelho2009", subset="gnf"), StudyDataset("coelho2009", subset="ic100")),)


@dataclass(frozen=True)
class TransferConfig:
    """Transfer to a new domain, for models trained on each pair's source with the study's recipe.

    For every pair, norm, source batch size and seed, the source model is tested zero-shot on the target's test
    split (with per-image and with dataset-level intensity normalization), then adapted with k of the target's
    training images for every k in ``finetune_images`` (a random subset per seed, nested as k grows):

    - ``recalibrate``: running statistics recomputed on the k images (norms with running statistics), on patches
      placed as training placed them (centred on labelled foreground: this uses the labels);
    - ``recalibrate-label-free``: the same on uniformly placed patches (no label used);
    - ``finetune``: fine-tuned on them; ``convert``: BatchNorm converted to BatchRenorm, then fine-tuned;
    - ``recalibrate-finetune``: recalibrated, then fine-tuned;
    - ``scratch``: a model trained from scratch on the k images only (the baseline transfer must beat).

    Every adapted model is tested on the target's whole test split, which no fine-tuning image comes from.
    ``augment`` (training.augment keys) applies to every transfer training, source models included; when it is
    set, the source models are trained for the transfer instead of taken from the grid.
    """

    enabled: bool = False
    pairs: tuple[TransferPair, ...] = field(default_factory=_coelho_pair)
    norms: tuple[str, ...] = ("batch", "batchrenorm", "instance", "instance_tracked", "group", "none")
    batch_sizes: tuple[int, ...] = (8,)
    seeds: tuple[int, ...] | None = None
    finetune_images: tuple[int, ...] = (2,)
    finetune_batch_size: int = 2
    finetune_iterations: int = 100
    finetune_learning_rate: float = 5e-4
    scratch_iterations: int | None = None
    stages: tuple[str, ...] = TRANSFER_STAGES
    augment: dict[str, Any] = field(default_factory=dict)
    test_images: int | None = None
    recalibration_batches: int = 32

    def __post_init__(self) -> None:
        _check_norms(self.norms, "transfer.norms")
        _check_batch_sizes((*self.batch_sizes, self.finetune_batch_size), "transfer batch sizes")
        if not self.finetune_images or min(self.finetune_images) < 1 or self.finetune_iterations < 1:
            raise ConfigError(f"transfer.finetune_images must be one or more counts >= 1 and finetune_iterations "
                              f">= 1, got {list(self.finetune_images)}, {self.finetune_iterations}")
        unknown = sorted(set(self.stages) - set(TRANSFER_STAGES))
        if unknown:
            raise ConfigError(f"unknown transfer.stages {unknown}; choose from {list(TRANSFER_STAGES)}")
        if self.test_images is not None and self.test_images < 1:
            raise ConfigError(f"transfer.test_images must be >= 1 (or null for all), got {self.test_images}")
        from seamfree.training.config import AugmentConfig

        try:
            AugmentConfig(**self.augment)
        except TypeError as exc:
            raise ConfigError(f"transfer.augment holds an unknown key ({exc}); use keys of training.augment: "
                              f"{sorted(AugmentConfig.__dataclass_fields__)}") from None


@dataclass(frozen=True)
class EqualSamplesConfig:
    """The equal-samples arm: models trained at each of ``batch_sizes`` for ``reference_batch / batch size`` times
    the recipe's iterations, so that they see as many training samples as the grid's ``reference_batch`` models, at
    each of ``learning_rates`` (empty: the recipe's), for every seed. The learning rate reported for a norm and
    batch size is the one with the best mean validation Dice over seeds (chosen without the test images).

    The grid compares batch sizes at equal iterations: a batch-1 model has seen 8× fewer samples than a batch-8
    one, at one untuned learning rate; this arm tells the budget from the batch size, and the learning-rate sweep
    at the reference batch tells an untuned rate from the norm. A run whose training equals a grid run's (the
    reference batch at the recipe's rate) reuses that model.
    """

    enabled: bool = False
    datasets: tuple[StudyDataset, ...] = ()
    norms: tuple[str, ...] = ("batch", "batchrenorm")
    batch_sizes: tuple[int, ...] = (1,)
    reference_batch: int = 8
    learning_rates: tuple[float, ...] = ()
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_norms(self.norms, "samples.norms")
        _check_batch_sizes((*self.batch_sizes, self.reference_batch), "samples batch sizes")
        if any(self.reference_batch % b for b in self.batch_sizes) or any(lr <= 0 for lr in self.learning_rates):
            raise ConfigError(f"samples.reference_batch must be a multiple of every samples.batch_sizes and every "
                              f"learning rate positive, got {self.reference_batch}, {list(self.batch_sizes)}, "
                              f"{list(self.learning_rates)}")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: what to train, how to measure, where to run."""

    profile: str = "custom"
    grid: GridConfig = field(default_factory=GridConfig)
    training: Recipe = field(default_factory=Recipe)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    samples: EqualSamplesConfig = field(default_factory=EqualSamplesConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    device: str = "cpu"
    threads: int | None = None


def _check_norms(norms: tuple[str, ...], where: str) -> None:
    for norm in norms:
        check_norm_name(norm, where=f"normalization in {where}")


def _check_batch_sizes(sizes: tuple[int, ...], where: str) -> None:
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"{where} must be one or more sizes >= 1, got {list(sizes)}")


_REAL_DATASETS = [{"name": "drosophila-vnc", "target": "mitochondria"},
                  {"name": "drosophila-vnc", "target": "membranes"},
                  {"name": "isbi2012"},
                  {"name": "coelho2009", "subset": "gnf"}]
# coelho2009 gnf → ic100 (another cell line and microscope setting); isbi2012 → drosophila-vnc membranes (EM).
_TRANSFER_PAIRS = [{"source": {"name": "coelho2009", "subset": "gnf"},
                    "target": {"name": "coelho2009", "subset": "ic100"}},
                   {"source": {"name": "isbi2012"}, "target": {"name": "drosophila-vnc", "target": "membranes"}}]
# Intensity augmentation for the transfer's training, set a priori from the source domain's own variation (never
# tuned on a target): contrast ±30 %, gamma 0.5–1.5, a smooth background offset up to 0.3 (haze).
_TRANSFER_AUGMENT = {"intensity": 0.3, "gamma": 0.5, "background": 0.3}
_ALL_NORMS = ["batch", "batchrenorm", "instance", "instance_tracked", "group", "none"]

PROFILES: dict[str, dict[str, Any]] = {
    # Every part of the study at toy scale: minutes on 2 CPU cores; the numbers only show the pipeline works.
    "quick": {
        "grid": {"datasets": [{"name": "isbi2012"}], "norms": ["batch", "batchrenorm", "instance"],
                 "batch_sizes": [1, 4]},
        "training": {"iterations": 60, "patch_size": [64, 64], "features": 4, "learning_rate": 3e-3,
                     "checkpoint_every": 20},
        "evaluation": {"test_images": 1, "core": 128, "ted_batches": 2, "measurement_batches": [1, 4],
                       "blend_overlaps": [0.25], "blend_images": 1},
        "vit": {"dataset": {"name": "isbi2012"}, "norms": ["batch", "layer"], "batch_sizes": [2],
                "recipe": {"iterations": 30, "patch_size": [64, 64], "features": 4, "checkpoint_every": 10}},
        "volume": {"enabled": True, "norms": ["batch", "instance"],
                   "recipe": {"iterations": 20, "patch_size": [4, 64, 64], "features": 4, "checkpoint_every": 10,
                              "scale_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2]]},
                   "core": [4, 128, 128], "small_core": [4, 64, 64], "region": [4, 256, 256]},
        "transfer": {"enabled": True, "norms": ["batch", "batchrenorm"], "batch_sizes": [4],
                     "finetune_images": [1, 2], "finetune_iterations": 10, "scratch_iterations": 20,
                     "test_images": 2, "recalibration_batches": 4},
    },
    # The whole grid with short training (500 iterations, 8-feature U-Nets), 3 seeds, 10 test images: verdicts
    # with confidence intervals over images and seeds (the grid about 1.5 h per seed with 2 test images on 2 CPU
    # cores; the transfer about 10 min per pair, norm, source batch size and seed, 10 h in all).
    "standard": {
        "grid": {"datasets": _REAL_DATASETS, "norms": _ALL_NORMS, "batch_sizes": [1, 8], "seeds": [0, 1, 2]},
        "training": {"iterations": 500, "patch_size": [128, 128], "features": 8},
        "evaluation": {"test_images": 10, "core": 256, "measurement_batches": [1, 8], "blend_overlaps": [0.25, 0.5]},
        # batch 1 for 8× the iterations on the groups where BatchRenorm did worst in round two
        "samples": {"enabled": True, "datasets": [{"name": "drosophila-vnc", "target": "mitochondria"},
                                                  {"name": "isbi2012"}],
                    "norms": ["batch", "batchrenorm"], "batch_sizes": [1, 8], "learning_rates": [1e-3, 2e-3],
                    "seeds": [0, 1, 2, 3, 4]},
        "vit": {"dataset": {"name": "isbi2012"}, "norms": ["batch", "batchrenorm", "layer"], "batch_sizes": [8],
                "recipe": {"iterations": 400, "patch_size": [128, 128], "features": 8}},
        "volume": {"enabled": True, "norms": ["batch", "batchrenorm", "instance"], "batch_sizes": [2],
                   "recipe": {"iterations": 200, "patch_size": [4, 128, 128], "features": 8,
                              "scale_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2]]}},
        "transfer": {"enabled": True, "pairs": _TRANSFER_PAIRS, "norms": ["batch", "batchrenorm", "instance"],
                     "batch_sizes": [2, 8], "finetune_images": [1, 2, 4, 8], "finetune_iterations": 100,
                     "augment": _TRANSFER_AUGMENT},
    },
    # The real study: paper-like training budgets. CPU days on 2 cores; hours on one GPU.
    "full": {
        "grid": {"datasets": _REAL_DATASETS, "norms": _ALL_NORMS, "batch_sizes": [1, 2, 8], "seeds": [0, 1, 2, 3, 4]},
        "training": {"iterations": 5000, "patch_size": [256, 256], "features": 32, "depth": 4,
                     "learning_rate": 1e-3, "renorm_warmup": 0.1, "renorm_ramp": 0.4, "running_momentum": 0.01,
                     "checkpoint_every": 250},
        "evaluation": {"test_images": 10, "core": 512, "measurement_batches": [1, 2, 8],
                       "blend_overlaps": [0.25, 0.5]},
        "samples": {"enabled": True, "datasets": [{"name": "drosophila-vnc", "target": "mitochondria"},
                                                  {"name": "isbi2012"}],
                    "norms": ["batch", "batchrenorm", "instance"], "batch_sizes": [1, 8],
                    "learning_rates": [5e-4, 1e-3, 2e-3]},
        "vit": {"dataset": {"name": "isbi2012"}, "norms": ["batch", "batchrenorm", "layer"], "batch_sizes": [1, 8],
                "recipe": {"iterations": 5000, "patch_size": [256, 256], "features": 32, "learning_rate": 1e-3,
                           "renorm_warmup": 0.1, "renorm_ramp": 0.4, "running_momentum": 0.01}},
        "volume": {"enabled": True, "norms": ["batch", "batchrenorm", "instance", "group"], "batch_sizes": [1, 2],
                   "recipe": {"iterations": 3000, "patch_size": [4, 256, 256], "features": 16, "depth": 4,
                              "scale_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]],
                              "learning_rate": 1e-3, "renorm_warmup": 0.1, "renorm_ramp": 0.4,
                              "running_momentum": 0.01, "checkpoint_every": 250},
                   "core": [4, 512, 512], "small_core": [4, 128, 128], "region": [4, 1024, 1024]},
        "transfer": {"enabled": True, "pairs": _TRANSFER_PAIRS, "norms": _ALL_NORMS, "batch_sizes": [2, 8],
                     "finetune_images": [1, 2, 4, 8], "finetune_iterations": 500, "augment": _TRANSFER_AUGMENT},
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_study_config(path: str | Path | None = None, *, profile: str = "quick",
                      overrides: list[str] | None = None) -> StudyConfig:
    """Return the StudyConfig of ``profile`` updated by the YAML file ``path`` and ``section.key=value`` overrides.

    Examples
    --------
    >>> config = load_study_config(profile="quick", overrides=["grid.batch_sizes=[1]"])
    >>> config.grid.batch_sizes, config.profile
    ((1,), 'quick')
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown study profile {profile!r}; choose one of {sorted(PROFILES)}")
    values = _merge(PROFILES[profile], {"profile": profile})
    if path is not None:
        values = _merge(values, read_mapping(path, what="study configuration", example="examples/study.yaml",
                                             sections="grid, training, evaluation, ..."))
    apply_overrides(values, overrides, example="grid.batch_sizes=[1]")
    return from_mapping(StudyConfig, values)
