"""``run_study(config, out)``: train and measure every run of a study, cached, resumable, in pieces.

Layout of the output directory::

    runs/<run name>-<digest>/train/       the trainer's output (checkpoints, state.pt, logs); resumes exactly
    runs/<run name>-<digest>/model.pt     the model that was measured
    runs/<run name>-<digest>/example.npz  the first test image's small-tile prediction (for figures)
    runs/<run name>-<digest>/result.json  written last, atomically: the run is done when it exists
    study.csv                             one row per run of the configuration (done, failed or missing)

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

__all__ = ["COLUMNS", "StudyResult", "read_rows", "run_directories", "run_study", "select_runs"]

logger = logging.getLogger(__name__)

LABELS = ("dataset", "test", "architecture", "dims", "norm", "batch_size", "seed", "stage", "images")
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


def run_directories(config: StudyConfig, out_dir: str | Path) -> dict[str, Path]:
    """Return run name → the directory where ``config``'s run keeps its results under ``out_dir``."""
    runs = plan_runs(config)
    digests = _digests(runs)
    return {run.name: _run_dir(Path(out_dir), run, digests[run.name]) for run in runs}


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


def _trained_model(run: StudyRun, directory: Path, source_dir: Path | None, config: StudyConfig) -> tuple[Path, float]:
    from seamfree.training.config import load_config
    from seamfree.training.loop import train

    mapping = copy.deepcopy(run.train) or {}
    if source_dir is not None:
        mapping["model"]["checkpoint"] = str(source_dir / "model.pt")
    mapping["output"] = str(directory / "train")
    mapping["training"]["device"] = config.device
    result = train(load_config(base=mapping), resume=True)
    model_path = directory / "model.pt"
    shutil.copyfile(result.last, model_path)
    return model_path, result.seconds


def _recalibrated_model(run: StudyRun, source_dir: Path, directory: Path, config: StudyConfig) -> Path:
    from seamfree.config import from_mapping
    from seamfree.data.config import DataConfig
    from seamfree.data.sources import load_pairs
    from seamfree.training.recalibrate import recalibrate_on_images

    options = run.evaluation["recalibrate"]
    data = options["dataset"]
    model = load_model(source_dir / "model.pt", device=config.device)
    # the same target images the fine-tuning runs of this k and seed train on
    pairs = load_pairs(from_mapping(DataConfig, data), spatial_dims=2)[0][:options["images"]]
    metadata = model_metadata(model)
    # patches drawn as training drew them (the model's foreground share), unless the study asks for uniform ones
    masks = None if options.get("sampling") == "uniform" else [mask for _, mask in pairs]
    recalibrate_on_images(model, [image for image, _ in pairs], patch_size=tuple(metadata["patch_size"]),
                          batch_size=options["batch_size"], batches=options["batches"], device=config.device,
                          masks=masks)
    return save_model(model, directory / "model.pt", metadata={**metadata, "recalibrated_on": data})


def _execute(run: StudyRun, digest: str, directory: Path, source_dir: Path | None,
             config: StudyConfig) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    train_seconds = 0.0
    if run.train is not None:
        model_path, train_seconds = _trained_model(run, directory, source_dir, config)
    elif "recalibrate" in run.evaluation and source_dir is not None:
        model_path = _recalibrated_model(run, source_dir, directory, config)
    elif source_dir is not None:
        model_path = source_dir / "model.pt"
    else:
        raise ConfigError(f"run {run.name} neither trains nor starts from another run")
    model = load_model(model_path, device=config.device)
    e = run.evaluation
    started = time.perf_counter()
    pairs = load_test_pairs(e["dataset"], spatial_dims=e["spatial_dims"], split=e["split"], count=e["images"])
    objects = "background" if e["dataset"].get("target") == "membranes" else "foreground"
    if e.get("metrics") == "accuracy":
        evaluation = evaluate_accuracy(model, pairs, normalization=e.get("normalization", "image"), objects=objects)
    else:
        evaluation = evaluate_model(model, pairs, core=_axes(e["core"]), small_core=_axes(e["small_core"]),
                                    halo=e["halo"], region=tuple(e["region"]) if e.get("region") else None,
                                    ted_batches=e["ted_batches"], ted_sampling=e.get("ted_sampling", "uniform"),
                                    objects=objects)
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
                elif key in (*METRICS, "val_dice", "train_seconds", "eval_seconds"):
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
    selected = select_runs(runs, only)
    if not dry_run:
        _check_datasets(selected)
    if config.threads:
        torch.set_num_threads(config.threads)
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
        if source_dir is not None and not (source_dir / "result.json").exists():
            rows.append(_row(run, digest, None, "failed", f"its source run {run.source} did not finish"))
            failed.append(run.name)
            continue
        logger.info("[%d/%d] %s", index + 1, len(runs), run.name)
        try:
            record = _execute(run, digest, directory, source_dir, config)
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

