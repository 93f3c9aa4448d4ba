"""``run_study(config, out)``: train and measure every run of a study, cached, resumable, in pieces.

Layout of the output directory::

    models/<model digest>/train/          the trainer's output (checkpoints, state.pt, logs); resumes exactly
    models/<model digest>/model.pt        a trained or recalibrated model; model.json: how long it took
    runs/<run name>-<digest>/example.npz  the first test image's small-tile prediction (for figures)
    runs/<run name>-<digest>/result.json  written last, atomically: the run is done when it exists
    study.csv                             one row per run of the configuration (done, failed or missing)

Models are keyed by what makes them (training mapping, recalibration, the model they start from), runs by that and
how they are measured: changing the evaluation re-measures the cached models and trains nothing again.

Interrupting a study (Ctrl-C, SIGKILL, a lost machine) and rerunning the same command continues where it
stopped: finished runs are read from ``result.json``, an interrupted training resumes from its ``state.pt``.
``only`` selects runs by name pattern (with the runs they start from), so a study can run in pieces.
"""

from __future__ import annotations

import copy
import csv
import fnmatch
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seamfree._version import __version__
from seamfree.errors import ConfigError, DataError
from seamfree.models.checkpoint import load_model, model_metadata, save_model
from seamfree.study.config import StudyConfig
from seamfree.study.evaluate import METRICS, PER_IMAGE, evaluate_accuracy, evaluate_model, load_test_pairs
from seamfree.study.runs import StudyRun, plan_runs

__all__ = ["COLUMNS", "StudyResult", "model_directories", "model_keys", "pending_runs", "read_rows", "run_directories",
           "run_study", "select_runs"]

logger = logging.getLogger(__name__)

LABELS = ("dataset", "test", "architecture", "dims", "norm", "batch_size", "seed", "stage", "images", "learning_rate")
IMAGE_COLUMNS = tuple(f"{k}_images" for k in PER_IMAGE)
COLUMNS = ("name", "kind", "status", *LABELS, *METRICS, "val_dice", "train_seconds", "eval_seconds", "digest",
           "error", *IMAGE_COLUMNS)


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did: the table's path and rows, and which runs ran, were cached or failed."""

    out: Path
    table: Path
    rows: list[dict[str, Any]]
    ran: list[str]
    cached: list[str]
    failed: list[str]


def select_runs(runs: Sequence[StudyRun], only: Sequence[str] | None) -> list[StudyRun]:
    """Return the runs whose name matches one of the ``only`` patterns (all without), with their sources."""
    if not only:
        return list(runs)
    by_name = {run.name: run for run in runs}
    chosen = {run.name for run in runs if any(fnmatch.fnmatch(run.name, pattern) for pattern in only)}
    if not chosen:
        raise ConfigError(f"no run matches {list(only)}; list the runs with `seamfree study --list` (e.g. "
                          f"{runs[0].name if runs else 'grid/*'})")
    for name in list(chosen):
        source = by_name[name].source
        while source is not None:
            chosen.add(source)
            source = by_name[source].source
    return [run for run in runs if run.name in chosen]


def _digests(runs: Sequence[StudyRun]) -> dict[str, str]:
    digests: dict[str, str] = {}
    for run in runs:
        digests[run.name] = run.digest(digests[run.source] if run.source else None)
    return digests


def _run_dir(out: Path, run: StudyRun, digest: str) -> Path:
    return out / "runs" / f"{run.name}-{digest}"


def model_keys(runs: Sequence[StudyRun]) -> dict[str, str]:
    """Return run name → the digest of the model it measures (its own, or its source's for a measuring run)."""
    keys: dict[str, str] = {}
    for run in runs:
        source = keys[run.source] if run.source else None
        key = run.model_digest(source) or source
        if key is None:
            raise ConfigError(f"run {run.name} neither trains nor starts from another run")
        keys[run.name] = key
    return keys


def run_directories(config: StudyConfig, out_dir: str | Path) -> dict[str, Path]:
    """Return run name → the directory where ``config``'s run keeps its results under ``out_dir``."""
    runs = plan_runs(config)
    digests = _digests(runs)
    return {run.name: _run_dir(Path(out_dir), run, digests[run.name]) for run in runs}


def model_directories(config: StudyConfig, out_dir: str | Path) -> dict[str, Path]:
    """Return run name → the directory of the model ``config``'s run measures under ``out_dir``."""
    return {name: Path(out_dir) / "models" / key for name, key in model_keys(plan_runs(config)).items()}


def pending_runs(config: StudyConfig, out_dir: str | Path, *, only: Sequence[str] | None = None) -> list[StudyRun]:
    """The selected runs of ``config`` that have no result under ``out_dir`` yet (those a study would run)."""
    runs = plan_runs(config)
    directories = run_directories(config, out_dir)
    return [run for run in select_runs(runs, only) if not (directories[run.name] / "result.json").exists()]


def exact_float32() -> None:
    """Turn TF32 off (matrix products and cuDNN convolutions in full float32 on NVIDIA GPUs): the study's exactness
    claims (tiled prediction equal to whole-image prediction to 1e-5) compare float32 results, which TF32's 10-bit
    mantissa would blur into ~1e-3 differences that are not tiling artifacts."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def _check_datasets(runs: Sequence[StudyRun]) -> None:
    from seamfree.data.datasets import dataset_path

    names = {run.evaluation["dataset"]["name"] for run in runs} - {"synthetic"}
    for name in sorted(names):
        path = dataset_path(name)
        if not path.is_dir() or not any(path.iterdir()):
            raise DataError(f"dataset {name!r} is not in {path}; run `seamfree data fetch {name}` or point "
                            "SEAMFREE_DATA at a folder that holds it")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=float))
    partial.replace(path)


def _trained_model(run: StudyRun, directory: Path, source_model: Path | None, config: StudyConfig) -> Path:
    from seamfree.training.config import load_config
    from seamfree.training.loop import train

    mapping = copy.deepcopy(run.train) or {}
    if source_model is not None:
        mapping["model"]["checkpoint"] = str(source_model)
    mapping["output"] = str(directory / "train")
    mapping["training"]["device"] = config.device
    result = train(load_config(base=mapping), resume=True)
    model_path = directory / "model.pt"
    shutil.copyfile(result.last, model_path.with_name("model.pt.partial"))
    _write_json(directory / "model.json", {"seconds": round(result.seconds, 2)})
    model_path.with_name("model.pt.partial").replace(model_path)
    # the model is kept twice (model.pt, the last; train/best.pt): the resumable state and the last checkpoint are
    # only needed while training runs, and are most of a paper-scale study's disk
    for pruned in (directory / "train" / "state.pt", Path(result.last)):
        if pruned.exists() and pruned.resolve() != model_path.resolve():
            pruned.unlink()
    return model_path


def _model(run: StudyRun, directory: Path, source_model: Path | None, config: StudyConfig) -> tuple[Path, float]:
    """Return the model ``run`` measures (trained, recalibrated or its source's) and the training seconds it took
    (0 when it was cached or only recalibrated)."""
    model_path = directory / "model.pt"
    if model_path.exists():  # trained for another run, or by an earlier study of the same model
        return model_path, 0.0
    directory.mkdir(parents=True, exist_ok=True)
    if run.train is not None:
        model_path = _trained_model(run, directory, source_model, config)
        return model_path, float(json.loads((directory / "model.json").read_text())["seconds"])
    if "recalibrate" in run.evaluation and source_model is not None:
        return _recalibrated_model(run, source_model, directory, config), 0.0
    raise ConfigError(f"run {run.name} neither trains nor recalibrates a model")


def _recalibrated_model(run: StudyRun, source_model: Path, directory: Path, config: StudyConfig) -> Path:
    from seamfree.config import from_mapping
    from seamfree.data.config import DataConfig
    from seamfree.data.sources import load_pairs
    from seamfree.training.recalibrate import recalibrate_on_images

    options = run.evaluation["recalibrate"]
    data = options["dataset"]
    model = load_model(source_model, device=config.device)
    # the same target images the fine-tuning runs of this k and seed train on
    pairs = load_pairs(from_mapping(DataConfig, data), spatial_dims=2)[0][:options["images"]]
    metadata = model_metadata(model)
    # patches drawn as training drew them (the model's foreground share), unless the study asks for uniform ones
    masks = None if options.get("sampling") == "uniform" else [mask for _, mask in pairs]
    recalibrate_on_images(model, [image for image, _ in pairs], patch_size=tuple(metadata["patch_size"]),
                          batch_size=options["batch_size"], batches=options["batches"], device=config.device,
                          masks=masks)
    partial = save_model(model, directory / "model.pt.partial", metadata={**metadata, "recalibrated_on": data})
    return partial.replace(directory / "model.pt")


def _execute(run: StudyRun, digest: str, directory: Path, model_dir: Path, source_model: Path | None,
             config: StudyConfig) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    if run.train is None and "recalibrate" not in run.evaluation:
        if source_model is None:
            raise ConfigError(f"run {run.name} neither trains nor starts from another run")
        model_path, train_seconds = source_model, 0.0
    else:
        model_path, train_seconds = _model(run, model_dir, source_model, config)
    model = load_model(model_path, device=config.device)
    e = run.evaluation
    started = time.perf_counter()
    pairs = load_test_pairs(e["dataset"], spatial_dims=e["spatial_dims"], split=e["split"], count=e["images"])
    objects = "background" if e["dataset"].get("target") == "membranes" else "foreground"
    if e.get("metrics") in ("accuracy", "light"):  # light: accuracy and TED at the measurement batches
        evaluation = evaluate_accuracy(model, pairs, normalization=e.get("normalization", "image"), objects=objects,
                                       core=_axes(e["core"]), halo=e["halo"], small_core=_axes(e["small_core"]),
                                       tile_sizes=e.get("tile_sizes", False),
                                       measurement_batches=tuple(e.get("measurement_batches", ())))
    else:
        evaluation = evaluate_model(model, pairs, core=_axes(e["core"]), small_core=_axes(e["small_core"]),
                                    halo=e["halo"], region=tuple(e["region"]) if e.get("region") else None,
                                    ted_batches=e["ted_batches"], ted_sampling=e.get("ted_sampling", "uniform"),
                                    objects=objects, measurement_batches=tuple(e.get("measurement_batches", ())),
                                    blend_overlaps=tuple(e.get("blend_overlaps", ())),
                                    blend_images=e.get("blend_images", 2))
    np.savez_compressed(directory / "example.npz", **evaluation.example)  # type: ignore[arg-type]
    return {"name": run.name, "kind": run.kind, "digest": digest, "labels": run.labels,
            "metrics": evaluation.metrics, "per_image": evaluation.per_image, "test_images": evaluation.images,
            "val_dice": model_metadata(model).get("val_dice"), "train_seconds": round(train_seconds, 2),
            "eval_seconds": round(time.perf_counter() - started, 2), "train": run.train, "evaluation": e,
            "source": run.source, "seamfree": __version__, "torch": torch.__version__, "device": config.device,
            "finished": datetime.now(UTC).isoformat(timespec="seconds")}


def _axes(value: Any) -> int | tuple[int, ...]:
    return tuple(value) if isinstance(value, list | tuple) else int(value)


def _row(run: StudyRun, digest: str, record: dict[str, Any] | None, status: str, error: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"name": run.name, "kind": run.kind, "status": status, "digest": digest, "error": error,
                           **{k: run.labels.get(k) for k in LABELS}}
    if record is not None:
        row.update({k: record["metrics"].get(k) for k in METRICS})
        row.update({f"{k}_images": (record.get("per_image") or {}).get(k) for k in PER_IMAGE})
        row.update({k: record.get(k) for k in ("val_dice", "train_seconds", "eval_seconds")})
    return row


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    partial.replace(path)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join("nan" if v is None else repr(float(v)) for v in value)
    return value


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Return the rows of a study CSV with numbers parsed (empty cells become None)."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, text in raw.items():
                if text == "":
                    row[key] = None
                elif key in (*METRICS, "val_dice", "train_seconds", "eval_seconds", "learning_rate"):
                    row[key] = float(text)
                elif key in IMAGE_COLUMNS:  # per-image values, ";"-separated, "nan" for an unknown one
                    row[key] = [float(v) for v in text.split(";")]
                elif key in ("dims", "batch_size", "seed", "images"):
                    row[key] = int(text)
                else:
                    row[key] = text
            rows.append(row)
    return rows


def run_study(config: StudyConfig, out_dir: str | Path, *, only: Sequence[str] | None = None,
              dry_run: bool = False) -> StudyResult:
    """Run (or read from cache) every selected run of ``config`` and write ``study.csv``; return what happened.

    A failing run (e.g. a diverging training) is recorded with its error and the study goes on; the
    study's table marks it ``failed``. ``dry_run`` only writes the table of what is done and what is not.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(config)
    digests = _digests(runs)
    directories = {run.name: _run_dir(out, run, digests[run.name]) for run in runs}
    models = model_keys(runs)
    selected = select_runs(runs, only)
    if not dry_run:
        _check_datasets(selected)
    if config.threads:
        torch.set_num_threads(config.threads)
    exact_float32()
    rows, ran, cached, failed = [], [], [], []
    selected_names = {run.name for run in selected}
    for index, run in enumerate(runs):
        digest = digests[run.name]
        directory = directories[run.name]
        result_path = directory / "result.json"
        if result_path.exists():
            rows.append(_row(run, digest, json.loads(result_path.read_text()), "done"))
            if run.name in selected_names:
                cached.append(run.name)
            continue
        if dry_run or run.name not in selected_names:
            rows.append(_row(run, digest, None, "missing"))
            continue
        source_dir = directories[run.source] if run.source else None
        source_model = out / "models" / models[run.source] / "model.pt" if run.source else None
        if source_dir is not None and not (source_dir / "result.json").exists():
            rows.append(_row(run, digest, None, "failed", f"its source run {run.source} did not finish"))
            failed.append(run.name)
            continue
        logger.info("[%d/%d] %s", index + 1, len(runs), run.name)
        try:
            record = _execute(run, digest, directory, out / "models" / models[run.name], source_model, config)
        except Exception as exc:  # one failing run must not stop a study of hours; the table records it
            logger.error("run %s failed: %s", run.name, exc)
            rows.append(_row(run, digest, None, "failed", f"{type(exc).__name__}: {exc}"))
            failed.append(run.name)
            continue
        _write_json(result_path, record)
        rows.append(_row(run, digest, record, "done"))
        ran.append(run.name)
        _write_table(out / "study.csv", rows + [_row(r, digests[r.name], None, "pending") for r in runs[index + 1:]])
    table = out / "study.csv"
    _write_table(table, rows)
    return StudyResult(out, table, rows, ran, cached, failed)

