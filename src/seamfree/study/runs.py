"""The runs of a study: one per trained (or re-used) model and test set, each identified by a content hash.

A run's digest covers everything that decides its result: the training configuration (without output paths,
device or threads), the evaluation settings, the digest of the run it starts from, and the study format. Runs
with the same digest are the same experiment, so results are cached across invocations, profiles and YAML
files; changing one setting re-runs exactly the runs it affects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from seamfree.layers.registry import norms_where
from seamfree.study.config import Recipe, StudyConfig, StudyDataset

__all__ = ["RUNNING_STATISTICS", "STUDY_FORMAT", "StudyRun", "plan_runs"]

# Bump when the evaluation changes meaning, so that cached results are not mixed with new ones.
STUDY_FORMAT = 1

# Norms whose eval mode uses running statistics (recalibration applies to them).
RUNNING_STATISTICS = norms_where(running_statistics=True)


@dataclass(frozen=True)
class StudyRun:
    """One experiment of the study.

    Attributes
    ----------
    name : str
        Readable unique name, e.g. ``grid/isbi2012/unet-batchrenorm-b8-s0``.
    kind : {"grid", "vit", "volume", "zero-shot", "finetune", "convert", "recalibrate"}
    labels : dict
        The columns that describe it in tables: dataset, architecture, dims, norm, batch_size, seed, stage.
    train : dict or None
        The training configuration (``seamfree.training.load_config`` mapping, without output, device and
        threads); None for runs that only evaluate (zero-shot) or recalibrate a source model.
    evaluation : dict
        What it is tested on and how (dataset, split, images, cores, halo, TED batches, recalibration).
    source : str, optional
        Name of the run whose model it starts from.
    """

    name: str
    kind: str
    labels: dict[str, Any]
    train: dict[str, Any] | None
    evaluation: dict[str, Any]
    source: str | None = None

    def digest(self, source_digest: str | None = None) -> str:
        """Return the 12-hex-digit content hash of this run (given the digest of its source run)."""
        payload = {"format": STUDY_FORMAT, "kind": self.kind, "train": self.train, "evaluation": self.evaluation,
                   "source": source_digest}
        text = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _dataset_mapping(dataset: StudyDataset, spatial_dims: int) -> dict[str, Any]:
    if dataset.name == "synthetic":
        return {"source": "synthetic", "synthetic_kind": dataset.target or "nuclei", "synthetic_shape": [256] * 2,
                "synthetic_train": 4, "synthetic_val": 1, "seed": 0}
    data: dict[str, Any] = {"source": dataset.name}
    if dataset.target:
        data["target"] = dataset.target
    if dataset.subset:
        data["subset"] = dataset.subset
    return data


def _norm_options(norm: str, recipe: Recipe) -> dict[str, Any]:
    return {"momentum": recipe.running_momentum} if norm in RUNNING_STATISTICS else {}


def _train_mapping(dataset: StudyDataset, recipe: Recipe, norm: str, batch_size: int, seed: int, *,
                   architecture: str = "unet", spatial_dims: int = 2) -> dict[str, Any]:
    model: dict[str, Any] = {"architecture": architecture, "spatial_dims": spatial_dims, "depth": recipe.depth,
                             "features": recipe.features, "norm": norm, "norm_options": _norm_options(norm, recipe)}
    if recipe.scale_factors is not None:
        model["scale_factors"] = [list(f) for f in recipe.scale_factors]
    return {
        "data": _dataset_mapping(dataset, spatial_dims),
        "model": model,
        "training": {"iterations": recipe.iterations, "batch_size": batch_size,
                     "patch_size": list(recipe.patch_size), "learning_rate": recipe.learning_rate,
                     "renorm_warmup": recipe.renorm_warmup, "renorm_ramp": recipe.renorm_ramp,
                     "validate_every": recipe.iterations, "checkpoint_every": recipe.checkpoint_every,
                     "seed": seed},
    }


def _evaluation(config: StudyConfig, dataset: StudyDataset, *, spatial_dims: int = 2,
                core: Any = None, small_core: Any = None, halo: Any = "auto", region: Any = None,
                patch_size: tuple[int, ...] = ()) -> dict[str, Any]:
    e = config.evaluation
    default_small = [max(8, p // 2) for p in patch_size]
    return {"dataset": {"name": dataset.name, "target": dataset.target, "subset": dataset.subset},
            "spatial_dims": spatial_dims, "split": "test", "images": e.test_images,
            "core": list(core) if isinstance(core, tuple | list) else core or e.core,
            "small_core": _plain(small_core or e.small_core or default_small), "halo": halo,
            "ted_batches": e.ted_batches, "region": _plain(region),
            "ted_sampling": "training"}  # TED batches drawn like the model's training batches


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _grid_run(config: StudyConfig, dataset: StudyDataset, norm: str, batch_size: int, seed: int) -> StudyRun:
    recipe = config.training
    return StudyRun(
        f"grid/{dataset.label}/unet-{norm}-b{batch_size}-s{seed}", "grid",
        {"dataset": dataset.label, "architecture": "unet", "dims": 2, "norm": norm, "batch_size": batch_size,
         "seed": seed, "stage": "in-distribution", "test": dataset.label},
        _train_mapping(dataset, recipe, norm, batch_size, seed),
        _evaluation(config, dataset, patch_size=recipe.patch_size))


def _in_distribution_runs(config: StudyConfig, kind: str, architecture: str, dataset: StudyDataset,
                          recipe: Recipe, norms: tuple[str, ...], batch_sizes: tuple[int, ...],
                          evaluation: dict[str, Any]) -> list[StudyRun]:
    seed, dims = config.grid.seeds[0], len(recipe.patch_size)
    return [StudyRun(
        f"{kind}/{dataset.label}/{architecture}-{norm}-b{batch_size}-s{seed}", kind,
        {"dataset": dataset.label, "architecture": architecture, "dims": dims, "norm": norm,
         "batch_size": batch_size, "seed": seed, "stage": "in-distribution", "test": dataset.label},
        _train_mapping(dataset, recipe, norm, batch_size, seed, architecture="vit" if kind == "vit" else "unet",
                       spatial_dims=dims),
        evaluation) for norm in norms for batch_size in batch_sizes]


def _vit_runs(config: StudyConfig) -> list[StudyRun]:
    vit = config.vit
    if vit.dataset is None:
        return []
    evaluation = _evaluation(config, vit.dataset, halo=config.evaluation.vit_halo, patch_size=vit.recipe.patch_size)
    return _in_distribution_runs(config, "vit", "vit", vit.dataset, vit.recipe, vit.norms, vit.batch_sizes,
                                 evaluation)


def _volume_runs(config: StudyConfig) -> list[StudyRun]:
    volume = config.volume
    if not volume.enabled:
        return []
    dataset = StudyDataset("drosophila-vnc", target=volume.target)
    evaluation = _evaluation(config, dataset, spatial_dims=3, core=volume.core, small_core=volume.small_core,
                             region=volume.region, patch_size=volume.recipe.patch_size)
    return _in_distribution_runs(config, "volume", "unet3d", dataset, volume.recipe, volume.norms,
                                 volume.batch_sizes, evaluation)


def _transfer_runs(config: StudyConfig) -> list[StudyRun]:
    t = config.transfer
    if not t.enabled:
        return []
    source_set = StudyDataset(t.dataset, subset=t.source_subset)
    target_set = StudyDataset(t.dataset, subset=t.target_subset)
    recipe, seed = config.training, config.grid.seeds[0]
    evaluation = _evaluation(config, target_set, patch_size=recipe.patch_size)
    finetune_data = {**_dataset_mapping(target_set, 2), "limit": t.finetune_images}
    finetune_training = {"iterations": t.finetune_iterations, "batch_size": t.finetune_batch_size,
                         "patch_size": list(recipe.patch_size), "learning_rate": t.finetune_learning_rate,
                         "validate_every": t.finetune_iterations, "checkpoint_every": recipe.checkpoint_every,
                         "seed": seed}
    runs = []
    for norm in t.norms:
        source = _grid_run(config, source_set, norm, t.batch_size, seed)
        base = {"dataset": source_set.label, "architecture": "unet", "dims": 2, "norm": norm,
                "batch_size": t.batch_size, "seed": seed, "test": target_set.label}
        runs.append(source)
        prefix = f"transfer/{source_set.label}-to-{target_set.label}/unet-{norm}-b{t.batch_size}-s{seed}"
        runs.append(StudyRun(f"{prefix}/zero-shot", "zero-shot", {**base, "stage": "zero-shot"}, None, evaluation,
                             source.name))
        runs.append(StudyRun(
            f"{prefix}/finetune", "finetune", {**base, "stage": f"fine-tuned ({t.finetune_images} images)"},
            {"data": finetune_data, "model": {"checkpoint": "<source>"}, "training": finetune_training},
            evaluation, source.name))
        if norm == "batch" and t.convert:
            runs.append(StudyRun(
                f"{prefix}/convert-batchrenorm-finetune", "convert",
                {**base, "stage": f"converted to BatchRenorm, fine-tuned ({t.finetune_images} images)"},
                {"data": finetune_data, "model": {"checkpoint": "<source>", "convert_norm": "batchrenorm",
                                                  "norm_options": _norm_options("batchrenorm", recipe)},
                 "training": finetune_training}, evaluation, source.name))
        if norm in RUNNING_STATISTICS and t.recalibrate:
            runs.append(StudyRun(
                f"{prefix}/recalibrate", "recalibrate",
                {**base, "stage": f"recalibrated ({t.finetune_images} images)"}, None,
                {**evaluation, "recalibrate": {"dataset": finetune_data, "images": t.finetune_images,
                                               "batch_size": 8, "batches": 32,
                                               # patches centred on foreground like the model's training patches
                                               "sampling": "training"}}, source.name))
    return runs


def plan_runs(config: StudyConfig) -> list[StudyRun]:
    """Return every run of ``config``, each after the run it starts from, without duplicates."""
    runs = [_grid_run(config, dataset, norm, batch_size, seed)
            for dataset in config.grid.datasets for norm in config.grid.norms
            for batch_size in config.grid.batch_sizes for seed in config.grid.seeds]
    runs += _vit_runs(config) + _volume_runs(config) + _transfer_runs(config)
    unique: dict[str, StudyRun] = {}
    for run in runs:
        unique.setdefault(run.name, run)
    return list(unique.values())
