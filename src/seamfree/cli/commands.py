"""The ``seamfree`` commands: each turns parsed arguments into one call of a public library function.

Libraries are imported inside each command, so that ``seamfree --help`` and a bad option cost no torch import.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seamfree.errors import DataError, SeamfreeError

if TYPE_CHECKING:

    from seamfree.tiling import IntensityNormalization

__all__ = ["audit", "convert", "data", "demo", "diagnose", "export", "predict", "recalibrate", "study", "train"]


def _model_options(args: argparse.Namespace) -> dict[str, object]:
    """The describe_model options of a command (``--spatial-dims``, ``--in-channels``, ``--output``)."""
    return {"spatial_dims": args.spatial_dims, "in_channels": args.in_channels, "model_output": args.model_output}


def _check_input_exists(image: Any) -> None:
    """A local input path that does not exist fails at once (URLs and remote stores are checked by their reader)."""
    text = str(image)
    if "://" in text or not isinstance(image, (str, Path)):
        return
    if not Path(text).exists():
        raise DataError(f"input {text!r} does not exist; check the path (relative paths start from "
                        f"{str(Path.cwd())!r})")


def _normalization(args: argparse.Namespace) -> IntensityNormalization:
    """``--normalization``, else "auto" (the library resolves it: what a bioimage.io package declares, else
    percentiles), the same as Python and napari."""
    from seamfree.tiling import IntensityNormalization

    return IntensityNormalization(args.normalization or "auto")


def export(args: argparse.Namespace) -> int:
    from seamfree.models import describe_model, load_model
    from seamfree.models.bioimageio import export_bioimageio

    if args.bioimageio.exists() and not args.overwrite:
        raise SeamfreeError(f"{str(args.bioimageio)!r} exists; pass --overwrite to replace it, or another path")
    model = load_model(args.model, trust_code=args.trust_code)
    info = describe_model(model, spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                          output=args.model_output)
    path = export_bioimageio(model, args.bioimageio, name=args.name or f"{Path(args.model).stem} (seamfree)")
    print(f"wrote {path} (halo {info.receptive_field.halo}, step {info.network_stride}, {info.verdict})")
    return 0


def audit(args: argparse.Namespace) -> int:
    from seamfree.layers import audit_norms
    from seamfree.models import describe_model, load_model

    model = load_model(args.model, trust_code=args.trust_code)
    if args.static:
        audit = audit_norms(model)
        info = None
    else:
        info = describe_model(model, spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                              output=args.model_output)
        audit = info.audit
    if args.json:
        print(json.dumps({**audit.to_dict(), "model": None if info is None else info.to_dict()}, indent=2))
        return 0
    print(f"verdict: {audit.verdict if info is None else info.verdict}")
    if info is not None:
        rf = info.receptive_field
        print(f"evidence: {info.evidence}")
        print(f"model: {info.kind}, {info.spatial_dims}D, {info.in_channels} → {info.out_channels} channel(s), network "
              f"stride {info.network_stride}, receptive-field radius {rf.radius}, halo {rf.halo}"
              + ("" if rf.linearized else " (estimated on the compiled model)"))
        for note in info.notes:
            print(f"note: {note}")
    print(f"static audit: {audit.summary}")
    for layer in audit.layers:
        flag = {True: "DEPENDS ON TILE", False: "ok", None: "unknown"}[layer.tile_dependent]
        print(f"  {layer.name:40s} {layer.type:18s} {layer.statistics:13s} {flag}")
    return 0


def _new_model_file(args: argparse.Namespace) -> None:
    """``--out`` of convert/recalibrate: never the input model, never an existing file without --overwrite; checked
    before any work."""
    out, source = Path(args.out), Path(args.model)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise SeamfreeError(f"--out {str(out)!r} is the input model itself; write the new model to another path "
                            "(the input stays as it was)")
    if out.is_dir():
        raise SeamfreeError(f"--out {str(out)!r} is a folder; pass the path of the new model file, e.g. "
                            f"{str(out / 'model.pt')!r}")
    if out.exists() and not args.overwrite:
        raise SeamfreeError(f"--out {str(out)!r} already exists; choose another path or pass --overwrite to "
                            "replace it")


def convert(args: argparse.Namespace) -> int:
    from seamfree.layers import convert_norm
    from seamfree.models import load_model, model_metadata, save_model

    _new_model_file(args)
    model = load_model(args.model, trust_code=args.trust_code)
    converted = convert_norm(model, args.to, from_=args.from_)
    metadata = {**model_metadata(model), "converted_from": str(args.model), "converted_norm": args.from_}
    path = save_model(converted, args.out, metadata=metadata)
    print(f"wrote {path}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from seamfree.models import load_model
    from seamfree.models.checkpoint import check_device
    from seamfree.tiling import IntensityNormalization, PredictConfig, PredictionReport, predict

    # before the model is loaded and described, which can take a minute: the device, the input, the core
    check_device(args.device)
    _check_input_exists(args.image)
    if args.core is not None:
        PredictConfig(core=args.core)  # the same check as below, before the slow part
    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    if (args.intensity_offset is None) != (args.intensity_scale is None):
        given = "--intensity-offset" if args.intensity_offset is not None else "--intensity-scale"
        raise SeamfreeError(f"{given} was given alone; pass both --intensity-offset and --intensity-scale (the "
                            "statistics to normalize with), or neither to compute them from the image")
    if args.workers is not None and args.workers < 1:
        raise SeamfreeError(f"--workers must be at least 1, got {args.workers}; leave it out to predict in this "
                            "process")
    if args.intensity_offset is not None:
        normalization = IntensityNormalization(args.normalization or "percentile", offset=(args.intensity_offset,),
                                               scale=(args.intensity_scale,))
    else:
        normalization = _normalization(args)
    config = PredictConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", stitching=args.stitching,
        overlap=args.overlap, blend_window=args.blend_window, tiles_per_batch=args.tiles_per_batch,
        device=args.device,
        amp=args.amp, tta=args.tta, channels_last=args.channels_last, compile=args.compile,
        normalization=normalization, output_kind=args.output_kind,
        threshold=args.threshold, pinned_core=args.core is not None and args.pin_core,
        allow_small_halo=args.allow_small_halo, overwrite=args.overwrite, activation=args.activation,
        voxel_size=args.voxel_size, unit=args.unit, pyramid=args.pyramid, max_error=args.max_error,
        memory_budget=int(args.memory_budget * 1e6) if args.memory_budget else None, tile_timing=args.tile_timing,
        labels=args.labels, channel_names=args.channel_names, ngff=args.ngff, sharding=args.sharding,
        **_model_options(args),  # type: ignore[arg-type]
    )
    if args.segment is not None and Path(args.out).suffix.lower() not in ("", ".zarr"):
        raise SeamfreeError(f"--segment writes the labels next to an OME-Zarr prediction; the output {str(args.out)!r} "
                            "is not one: pass a .zarr output")
    if args.workers or args.scheduler:
        from seamfree.distributed import predict_distributed

        cluster = _cluster(args)
        summary = predict_distributed(args.model, args.image, args.out, config=config, cluster=cluster,
                                      axes=args.axes, progress=not args.quiet, trust_code=args.trust_code,
                                      key=_key(args), channels=args.channels, gray=args.gray)
        print(f"wrote {args.out}: {summary.tiles_computed} of {summary.tiles_total} tiles in {summary.tasks} tasks on "
              f"{summary.workers} workers, {summary.seconds:.1f} s ({summary.voxels_per_second:.3g} voxels/s)")
        if summary.halo_check is not None:
            print(summary.halo_check.summary())
        return _segment_after(args)
    report: list[PredictionReport] = []
    image = _input(args, model)
    try:
        predict(model, image, args.out, config=config, axes=args.axes, progress=not args.quiet, report=report,
                key=_key(args))
    finally:
        if image is not args.image:
            image.close()
    done = report[0]
    frames = f" in {done.frames} frames" if done.frames is not None else ""
    print(f"wrote {args.out}: {done.tiles_computed} of {done.tiles_total} tiles{frames} computed in "
          f"{done.seconds:.1f} s (core {done.grid.core}, halo {done.grid.halo}, "
          f"{done.grid.compute_ratio:.2f}× voxels computed)")
    if done.halo_check is not None:
        print(done.halo_check.summary())
    return _segment_after(args)


def _cluster(args: argparse.Namespace) -> Any:
    from seamfree.distributed import ClusterConfig

    if args.workers is not None and args.workers < 1:
        raise SeamfreeError(f"--workers must be at least 1, got {args.workers}; leave it out to run in this process")
    return ClusterConfig(scheduler=args.scheduler, workers=args.workers or 2,
                         threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                         tiles_per_task=getattr(args, "tiles_per_task", 4), timeout=args.timeout,
                         tune_allocator=getattr(args, "tune_allocator", False), worker_timeout=args.worker_timeout)


def _segment_after(args: argparse.Namespace) -> int:
    """``predict --segment METHOD``: the labels of the finished prediction, next to it."""
    if args.segment is None:
        return 0
    return _run_segment(args, Path(args.out), None, {"method": args.segment})


def segment(args: argparse.Namespace) -> int:
    options = {name: getattr(args, name) for name in (
        "method", "foreground_channel", "boundary_channel", "threshold", "seed_threshold", "min_size",
        "min_distance", "min_radius", "connectivity", "block", "halo", "max_halo", "name", "key", "pyramid",
        "overwrite", "spatial_dims", "axes") if getattr(args, name, None) is not None}
    return _run_segment(args, args.prediction, args.out, options)


def _run_segment(args: argparse.Namespace, prediction: Any, out: Path | None, options: dict[str, Any]) -> int:
    from seamfree.segment import SegmentConfig, segment

    config = SegmentConfig(**options)
    if args.workers or args.scheduler:
        from seamfree.distributed import cluster_runner

        with cluster_runner(_cluster(args)) as run:
            result = segment(str(prediction), out, config=config, run=run)
    else:
        result = segment(str(prediction), out, config=config)
    exact = ("exact (every voxel proven equal to the whole-image result)" if result.exact else
             f"{result.unverified_voxels} voxels not proven exact (see the warning)")
    print(f"wrote {result.path}: {result.objects} objects ({result.method}, blocks {result.block}, halo "
          f"{result.halo}), {exact}, {result.seconds:.1f} s")
    return 0


def _input(args: argparse.Namespace, model: Any) -> Any:
    """The input path, or, with --channels/--gray, the input opened with that channel selection."""
    if args.channels is None and not args.gray:
        return args.image
    from seamfree.io.readers import open_image
    from seamfree.models.describe import describe_model

    dims = describe_model(model, spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                          probe=False).spatial_dims
    return open_image(args.image, spatial_dims=dims, axes=args.axes, key=_key(args), channels=args.channels,
                      gray=args.gray, frames=True)


def _key(args: argparse.Namespace) -> str | None:
    """The member of the input to read: --key, or --series N of a bioformats2raw layout."""
    if args.series is None:
        return args.key
    if args.key is not None:
        raise SeamfreeError(f"--key {args.key!r} and --series {args.series} both choose what to read; give one")
    return str(args.series)


def diagnose(args: argparse.Namespace) -> int:
    from seamfree.diagnostics import DiagnoseConfig, diagnose
    from seamfree.diagnostics.report import write_report
    from seamfree.models import load_model

    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    config = DiagnoseConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", grid_offset=args.grid_offset,
        normalization=_normalization(args), patch_size=args.patch_size,
        batch_size=args.batch_size, ted_batches=args.ted_batches, ted_sampling=args.ted_sampling,
        threshold=args.threshold, device=args.device,
        seed=args.seed, activation=args.activation, **_model_options(args),  # type: ignore[arg-type]
    )
    image = _input(args, model)
    try:
        diagnosis = diagnose(model, image, ground_truth=args.gt, config=config, axes=args.axes,
                             name=args.name or Path(args.model).stem, key=_key(args))
    finally:
        if image is not args.image:
            image.close()
    page = write_report(diagnosis, args.out)
    tm, ted = diagnosis.tile_mismatch, diagnosis.disparity
    print(f"{diagnosis.recommendation.verdict}: {diagnosis.recommendation.message}")
    for action in diagnosis.recommendation.actions:
        print(f"  -> {action}")
    print(f"TM_dice {tm.tm_dice:.3g}  TM_abs {tm.tm_abs:.2g}  TED_dice {ted.ted_dice:.3g}  TED_abs {ted.ted_abs:.2g}  "
          f"max|tiled-whole| {diagnosis.exactness.max_abs:.2g}")
    print(f"seams: {diagnosis.seams.summary}")
    print(f"report: {page} (JSON: {Path(args.out) / 'report.json'})")
    return 0


def train(args: argparse.Namespace) -> int:
    from seamfree.training import load_config, train

    overrides = list(args.set or [])
    for key, value in (("output", args.out), ("training.iterations", args.iterations),
                       ("training.device", args.device), ("model.norm", args.norm)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    dice = "n/a" if result.best_dice is None else f"{result.best_dice:.4f}"
    print(f"trained {result.iterations} iterations in {result.seconds:.0f} s; best validation Dice {dice}; "
          f"checkpoints {result.best} and {result.last}")
    return 0


def recalibrate(args: argparse.Namespace) -> int:
    from seamfree.models import load_model, model_metadata, save_model
    from seamfree.training.recalibrate import recalibrate_on_images

    _new_model_file(args)
    model = load_model(args.model, device=args.device, trust_code=args.trust_code)
    metadata = model_metadata(model)
    patch = args.patch_size or metadata.get("patch_size") or 128
    recalibrate_on_images(model, args.images, patch_size=patch, batch_size=args.batch_size, batches=args.batches,
                          seed=args.seed, device=args.device, spatial_dims=args.spatial_dims,
                          in_channels=args.in_channels, output=args.model_output)
    path = save_model(model, args.out, metadata={**metadata, "recalibrated_on": [str(i) for i in args.images]})
    print(f"wrote {path}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from seamfree.study.demo import run_demo

    result = run_demo(args.out, iterations=args.iterations, image_size=args.image_size, progress=not args.quiet)
    print(f"\nreport: {result.report}")
    for d in result.diagnoses:
        tm, ted = d.tile_mismatch, d.disparity
        print(f"  {d.name:18s} {d.recommendation.verdict:20s} TM_dice {tm.tm_dice:.3g}  TM_abs {tm.tm_abs:.2g}  "
              f"TED_dice {ted.ted_dice:.2g}  Dice {d.dice:.3f}  {d.seams.summary}")
    print("Open the report in a browser. Its crops at a seam crossing (also in report/figures/crops.png) show "
          "where the InstanceNorm tiles disagree (|A − B|, the prediction against the one on a shifted grid) and "
          "that the BatchRenorm ones do not (tile mismatch 0: tiled = whole-image prediction).")
    return 0


def study(args: argparse.Namespace) -> int:
    from seamfree.study import describe_hardware, load_study_config, plan_runs, run_directories, run_study
    from seamfree.study.results import write_results
    from seamfree.study.runner import select_runs

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    if args.threads:
        overrides.append(f"threads={args.threads}")
    config = load_study_config(args.config, profile=args.profile, overrides=overrides)
    if args.list:
        directories = run_directories(config, args.out)
        for run in plan_runs(config):
            state = "done" if (directories[run.name] / "result.json").exists() else "to do"
            print(f"{state:6s} {run.name}")
        return 0
    # per-tile and per-step messages of the library would bury the study's progress; restored afterwards
    quieted = {name: logging.getLogger(name) for name in ("seamfree.tiling", "seamfree.diagnostics",
                                                         "seamfree.training")}
    levels = {name: logger.level for name, logger in quieted.items()}
    for logger in quieted.values():
        logger.setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        result = run_study(config, args.out, only=args.only, dry_run=args.report_only)
    finally:
        for name, logger in quieted.items():
            logger.setLevel(levels[name])
    results = args.results or args.out / "results.md"
    # the page is of the runs selected (and the command regenerating it says which, and with what settings)
    selected = {run.name for run in select_runs(plan_runs(config), args.only)}
    options = [*(f"--set {shlex.quote(item)}" for item in args.set or []),
               *(f"--only {shlex.quote(pattern)}" for pattern in args.only or []),
               *([f"--device {args.device}"] if args.device else [])]
    command = " ".join([f"seamfree study {f'{args.config} ' if args.config else ''}--profile {config.profile} "
                        f"--out {args.out}", *options, f"--results {results}"])
    page = write_results([row for row in result.rows if row["name"] in selected], results,
                         run_dirs=run_directories(config, args.out), command=command, profile=config.profile,
                         hardware=describe_hardware(config.device), transfer=config.transfer)
    done = sum(row["status"] == "done" for row in result.rows)
    print(f"\n{len(result.ran)} run(s) trained and measured, {len(result.cached)} from the cache, "
          f"{len(result.failed)} failed; {done} of {len(result.rows)} runs of profile {config.profile} done")
    print(f"table:   {result.table}\nresults: {page}")
    if result.failed:
        print("failed runs (their errors are in the table; rerun the command to retry them): "
              + ", ".join(result.failed), file=sys.stderr)
        return 1
    return 0


def data(args: argparse.Namespace) -> int:
    from seamfree.data import datasets

    if args.action == "list":
        for dataset in datasets.DATASETS.values():
            print(f"{dataset.name:16s} {dataset.description}")
        print(f"cache: {datasets.data_root()} (set SEAMFREE_DATA to change it)")
        return 0
    if not args.name:
        raise SeamfreeError(f"seamfree data {args.action} needs a dataset name: {', '.join(datasets.DATASETS)}")
    dataset = datasets.get_dataset(args.name)
    if args.action == "info":
        state = datasets.verify(dataset.name)
        present = "complete" if not any(state.values()) else (f"{len(state['missing'])} missing, "
                                                              f"{len(state['corrupt'])} corrupt file(s)")
        print(f"{dataset.name}: {dataset.description}\nsource:   {dataset.source}\nlicence:  {dataset.licence}\n"
              f"cite:     {dataset.citation}\ntargets:  {', '.join(dataset.targets)}"
              + (f"\nsubsets:  {', '.join(dataset.subsets)}" if dataset.subsets else "")
              + f"\nfiles:    {len(dataset.manifest())} ({present} in {datasets.data_root() / dataset.name})"
              + f"\nsplits:   {datasets.SPLIT_DOCS[dataset.name]}")
        return 0
    path = datasets.fetch(dataset.name, progress=None if args.quiet else
                          (lambda done, total: print(f"\r{done}/{total} files", end="", flush=True)))
    print(f"\n{dataset.name}: every file verified (sha256) in {path}")
    return 0
