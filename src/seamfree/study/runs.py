"""The runs of a study: one per trained (or re-used) model and test set, each identified by a content hash.

A run's digest covers everything that decides its result: the training configuration (without output paths,
device or threads), the evaluation settings, the digest of the run it starts from, and the study format. Runs
with the same digest are the same experiment, so results are cached across invocations, profiles and YAML
files; changing one setting re-runs exactly the runs it affects.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from seamfree.layers.registry import norm_spec, norms_where
from seamfree.study.config import Recipe, StudyConfig, StudyDataset, TransferPair

__all__ = ["MODEL_FORMAT", "RUNNING_STATISTICS", "STUDY_FORMAT", "StudyRun", "plan_runs"]

# Bump when the evaluation changes meaning, so that cached results are not mixed with new ones.
STUDY_FORMAT = 2
# Bump when training changes meaning, so that cached models are trained again.
MODEL_FORMAT = 1

# Norms whose eval mode uses running statistics (recalibration applies to them).
RUNNING_STATISTICS = norms_where(running_statistics=True)


@dataclass(frozen=True)
class StudyRun:
    """One experiment of the study.

    Attributes
    ----------
    name : str
        Readable unique name, e.g. ``grid/isbi2012/unet-batchrenorm-b8-s0``.
    kind : {"grid", "vit", "volume", "transfer-source", "zero-shot", "zero-shot-dataset", "recalibrate",
            "finetune", "convert", "recalibrate-finetune", "scratch"}
    labels : dict
        The columns that describe it in tables: dataset, test, architecture, dims, norm, batch_size, seed,
        stage, and for transfer runs ``images`` (the k target images it was adapted on).
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
        return _hash({"format": STUDY_FORMAT, "kind": self.kind, "train": self.train, "evaluation": self.evaluation,
                      "source": source_digest})

    def model_digest(self, source_model: str | None = None) -> str | None:
        """Return the content hash of the model this run measures (given its source's model hash), or None for a
        run that measures its source's model as it is.

        Only what makes the model counts (the training mapping, the recalibration, the model it starts from), not
        how it is measured: a change of the evaluation re-measures the cached models and trains nothing.
        """
        if self.train is not None:
            return _hash({"format": MODEL_FORMAT, "train": self.train, "source": source_model})
        if "recalibrate" in self.evaluation:
            return _hash({"format": MODEL_FORMAT, "recalibrate": self.evaluation["recalibrate"],
                          "source": source_model})
        return None


def _hash(payload: dict[str, Any]) -> str:
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


def _arms(config: StudyConfig, norm: str) -> dict[str, Any]:
    """The evaluation's extra arms for a model of ``norm`` (:mod:`seamfree.study.arms`), where they apply."""
    e = config.evaluation
    arms: dict[str, Any] = {}
    if e.measurement_batches and norm in RUNNING_STATISTICS:
        arms["measurement_batches"] = list(e.measurement_batches)
    if e.blend_overlaps and norm in e.blend_norms:
        # both predictions of the arm normalized with the whole image's statistics (a cut image's own would differ)
        arms.update(blend_overlaps=list(e.blend_overlaps), blend_images=e.blend_images,
                    blend_normalization="whole image")
    return arms


def _grid_run(config: StudyConfig, dataset: StudyDataset, norm: str, batch_size: int, seed: int) -> StudyRun:
    recipe = config.training
    return StudyRun(
        f"grid/{dataset.label}/unet-{norm}-b{batch_size}-s{seed}", "grid",
        {"dataset": dataset.label, "architecture": "unet", "dims": 2, "norm": norm, "batch_size": batch_size,
         "seed": seed, "stage": "in-distribution", "test": dataset.label},
        _train_mapping(dataset, recipe, norm, batch_size, seed),
        {**_evaluation(config, dataset, patch_size=recipe.patch_size), **_arms(config, norm)})


def _in_distribution_runs(config: StudyConfig, kind: str, architecture: str, dataset: StudyDataset,
                          recipe: Recipe, norms: tuple[str, ...], batch_sizes: tuple[int, ...],
                          evaluation: dict[str, Any]) -> list[StudyRun]:
    dims = len(recipe.patch_size)
    return [StudyRun(
        f"{kind}/{dataset.label}/{architecture}-{norm}-b{batch_size}-s{seed}", kind,
        {"dataset": dataset.label, "architecture": architecture, "dims": dims, "norm": norm,
         "batch_size": batch_size, "seed": seed, "stage": "in-distribution", "test": dataset.label},
        _train_mapping(dataset, recipe, norm, batch_size, seed, architecture="vit" if kind == "vit" else "unet",
                       spatial_dims=dims),
        evaluation) for norm in norms for batch_size in batch_sizes for seed in config.grid.seeds]


def _equal_samples_runs(config: StudyConfig) -> list[StudyRun]:
    arm, recipe = config.samples, config.training
    if not arm.enabled:
        return []
    runs = []
    for dataset in arm.datasets:
        for norm in arm.norms:
            for batch in arm.batch_sizes:
                factor = arm.reference_batch // batch
                for rate in arm.learning_rates or (recipe.learning_rate,):
                    for seed in arm.seeds or config.grid.seeds:
                        train = _train_mapping(dataset, recipe, norm, batch, seed)
                        if factor != 1 or rate != recipe.learning_rate:  # else exactly the grid's training
                            iterations = recipe.iterations * factor
                            train["training"].update(iterations=iterations, validate_every=iterations,
                                                     learning_rate=rate,
                                                     checkpoint_every=recipe.checkpoint_every * factor)
                        evaluation = {**_evaluation(config, dataset, patch_size=recipe.patch_size),
                                      "metrics": "light"}
                        if "measurement_batches" in _arms(config, norm):
                            evaluation["measurement_batches"] = _arms(config, norm)["measurement_batches"]
                        runs.append(StudyRun(
                            f"equal-samples/{dataset.label}/unet-{norm}-b{batch}x{factor}-lr{rate:g}-s{seed}",
                            "equal-samples",
                            {"dataset": dataset.label, "architecture": "unet", "dims": 2, "norm": norm,
                             "batch_size": batch, "seed": seed, "stage": "equal samples", "test": dataset.label,
                             "learning_rate": rate}, train, evaluation))
    return runs


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
    runs: list[StudyRun] = []
    for pair in t.pairs:
        for seed in t.seeds or config.grid.seeds:
            for norm in t.norms:
                runs += _scratch_runs(config, pair, norm, seed)
                for batch_size in t.batch_sizes:
                    runs += _adapted_runs(config, pair, norm, batch_size, seed)
    return runs


def _transfer_evaluation(config: StudyConfig, target: StudyDataset, norm: str, *, full: bool = False,
                         normalization: str = "image") -> dict[str, Any]:
    """The target's test split: the whole diagnosis for zero-shot models (ΔDice under domain shift), accuracy
    only (Dice and instance scores of the exact tiled prediction) for adapted ones."""
    t = config.transfer
    evaluation = _evaluation(config, target, patch_size=config.training.patch_size)
    evaluation["images"] = t.test_images  # None: every test image
    if not full:
        # the zero-shot diagnosis's tiling (core, halo) at every stage, and for norms whose prediction depends on
        # the tile also the small core and the whole image (the tile size is a hidden hyper-parameter under shift)
        evaluation["metrics"] = "accuracy"
        evaluation["tile_sizes"] = norm_spec(norm).tile_dependent
    if normalization != "image":
        evaluation["normalization"] = normalization
    return evaluation


def _finetune_training(config: StudyConfig, seed: int, iterations: int) -> dict[str, Any]:
    t, recipe = config.transfer, config.training
    training: dict[str, Any] = {
        "iterations": iterations, "batch_size": t.finetune_batch_size, "patch_size": list(recipe.patch_size),
        "learning_rate": t.finetune_learning_rate, "validate_every": iterations,
        "checkpoint_every": recipe.checkpoint_every, "seed": seed}
    if t.augment:
        training["augment"] = dict(t.augment)
    return training


def _target_images(target: StudyDataset, count: int, seed: int) -> dict[str, Any]:
    # a random subset of the target's training images per seed, nested as count grows
    return {**_dataset_mapping(target, 2), "limit": count, "subset_seed": 1_000 + seed}


def _source_run(config: StudyConfig, pair: TransferPair, norm: str, batch_size: int, seed: int) -> StudyRun:
    run = _grid_run(config, pair.source, norm, batch_size, seed)
    if not config.transfer.augment:
        return run  # the grid's model (shared with the grid when the grid has it)
    train = copy.deepcopy(run.train) or {}
    train["training"]["augment"] = dict(config.transfer.augment)
    return StudyRun(run.name.replace("grid/", "transfer-source/", 1), "transfer-source", run.labels, train,
                    run.evaluation)


def _adapted_runs(config: StudyConfig, pair: TransferPair, norm: str, batch_size: int, seed: int) -> list[StudyRun]:
    t = config.transfer
    source = _source_run(config, pair, norm, batch_size, seed)
    base = {"dataset": pair.source.label, "architecture": "unet", "dims": 2, "norm": norm,
            "batch_size": batch_size, "seed": seed, "test": pair.target.label}
    prefix = f"transfer/{pair.label}/unet-{norm}-b{batch_size}-s{seed}"
    runs = [source]
    if "zero-shot" in t.stages:
        runs.append(StudyRun(f"{prefix}/zero-shot", "zero-shot", {**base, "stage": "zero-shot"}, None,
                             _transfer_evaluation(config, pair.target, norm, full=True), source.name))
        runs.append(StudyRun(f"{prefix}/zero-shot-dataset", "zero-shot-dataset",
                             {**base, "stage": "zero-shot, dataset-level normalization"}, None,
                             _transfer_evaluation(config, pair.target, norm, normalization="dataset"), source.name))
    evaluation = _transfer_evaluation(config, pair.target, norm)
    finetune = _finetune_training(config, seed, t.finetune_iterations)
    for k in t.finetune_images:
        data = _target_images(pair.target, k, seed)
        labels = {**base, "images": k}
        tuned = {"data": data, "model": {"checkpoint": "<source>"}, "training": finetune}
        if "finetune" in t.stages:
            runs.append(StudyRun(f"{prefix}/k{k}/finetune", "finetune", {**labels, "stage": "fine-tuned"}, tuned,
                                 evaluation, source.name))
        if norm == "batch" and "convert" in t.stages:
            runs.append(StudyRun(
                f"{prefix}/k{k}/convert-batchrenorm-finetune", "convert",
                {**labels, "stage": "converted to BatchRenorm, fine-tuned"},
                {**tuned, "model": {"checkpoint": "<source>", "convert_norm": "batchrenorm",
                                    "norm_options": _norm_options("batchrenorm", config.training)}},
                evaluation, source.name))
        if norm in RUNNING_STATISTICS and {"recalibrate", "recalibrate-label-free", "recalibrate-finetune"} & set(
                t.stages):
            recalibrated = StudyRun(
                f"{prefix}/k{k}/recalibrate", "recalibrate", {**labels, "stage": "recalibrated"}, None,
                {**evaluation, "recalibrate": {"dataset": data, "images": k, "batch_size": 8,
                                               "batches": t.recalibration_batches,
                                               # patches centred on foreground like the model's training patches
                                               "sampling": "training"}}, source.name)
            runs.append(recalibrated)
            if "recalibrate-label-free" in t.stages:
                runs.append(StudyRun(
                    f"{prefix}/k{k}/recalibrate-label-free", "recalibrate-label-free",
                    {**labels, "stage": "recalibrated without labels"}, None,
                    {**evaluation, "recalibrate": {**recalibrated.evaluation["recalibrate"], "sampling": "uniform"}},
                    source.name))
            if "recalibrate-finetune" in t.stages:
                runs.append(StudyRun(f"{prefix}/k{k}/recalibrate-finetune", "recalibrate-finetune",
                                     {**labels, "stage": "recalibrated, fine-tuned"}, tuned, evaluation,
                                     recalibrated.name))
    return runs


def _scratch_runs(config: StudyConfig, pair: TransferPair, norm: str, seed: int) -> list[StudyRun]:
    t = config.transfer
    if "scratch" not in t.stages:
        return []
    recipe = config.training
    iterations = t.scratch_iterations or recipe.iterations
    runs = []
    for k in t.finetune_images:
        train = _train_mapping(pair.target, recipe, norm, t.finetune_batch_size, seed)
        train["data"] = _target_images(pair.target, k, seed)
        train["training"].update(iterations=iterations, validate_every=iterations)
        if t.augment:
            train["training"]["augment"] = dict(t.augment)
        runs.append(StudyRun(
            f"transfer/{pair.label}/unet-{norm}-scratch-s{seed}/k{k}", "scratch",
            {"dataset": pair.target.label, "architecture": "unet", "dims": 2, "norm": norm,
             "batch_size": t.finetune_batch_size, "seed": seed, "test": pair.target.label, "images": k,
             "stage": "from scratch"}, train, _transfer_evaluation(config, pair.target, norm)))
    return runs


def plan_runs(config: StudyConfig) -> list[StudyRun]:
    """Return every run of ``config``, each after the run it starts from, without duplicates."""
    runs = [_grid_run(config, dataset, norm, batch_size, seed)
            for dataset in config.grid.datasets for norm in config.grid.norms
            for batch_size in config.grid.batch_sizes for seed in config.grid.seeds]
    runs += _equal_samples_runs(config) + _vit_runs(config) + _volume_runs(config) + _transfer_runs(config)
    unique: dict[str, StudyRun] = {}
    for run in runs:
        unique.setdefault(run.name, run)
    return list(unique.values())
