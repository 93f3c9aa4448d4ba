"""The ``seamfree`` command line: argument parsing only; every command calls a public library function.

Errors raised on purpose (``SeamfreeError``) and bad arguments print one line and exit with status 2;
tracebacks appear only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from seamfree import __version__
from seamfree.errors import SeamfreeError

logger = logging.getLogger("seamfree.cli")

EXIT_BAD_INPUT = 2


def _int_tuple(text: str) -> int | tuple[int, ...]:
    """Parse ``"256"`` (every axis) into an int, ``"32,256,256"`` into a tuple of ints."""
    try:
        values = tuple(int(part) for part in text.split(","))
        return values[0] if len(values) == 1 else values
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from exc


def _cmd_audit(args: argparse.Namespace) -> int:
    from seamfree.layers import audit_norms
    from seamfree.models import load_model

    audit = audit_norms(load_model(args.model, allow_pickle=args.allow_pickle))
    if args.json:
        print(json.dumps(audit.to_dict(), indent=2))
        return 0
    print(f"verdict: {audit.verdict}\n{audit.summary}")
    for layer in audit.layers:
        flag = {True: "DEPENDS ON TILE", False: "ok", None: "unknown"}[layer.tile_dependent]
        print(f"  {layer.name:40s} {layer.type:18s} {layer.statistics:13s} {flag}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from seamfree.layers import convert_norm
    from seamfree.models import load_model, model_metadata, save_model

    model = load_model(args.model, allow_pickle=args.allow_pickle)
    converted = convert_norm(model, args.to, from_=args.from_)
    metadata = {**model_metadata(model), "converted_from": str(args.model), "converted_norm": args.from_}
    path = save_model(converted, args.out, metadata=metadata)
    print(f"wrote {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from seamfree.models import load_model
    from seamfree.tiling import IntensityNormalization, PredictConfig, PredictionReport, predict

    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    if args.offset is not None:
        normalization = IntensityNormalization(args.normalization, offset=(args.offset,), scale=(args.scale,))
    else:
        normalization = IntensityNormalization(args.normalization)
    config = PredictConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", stitching=args.stitching,
        overlap=args.overlap, blend_window=args.blend_window, batch_size=args.batch_size, device=args.device,
        amp=args.amp, tta=args.tta, normalization=normalization, output_kind=args.output_kind,
        threshold=args.threshold, pinned_core=args.core is not None and args.pin_core,
        allow_small_halo=args.allow_small_halo, overwrite=args.overwrite,
    )
    if args.workers or args.scheduler:
        from seamfree.distributed import ClusterConfig, predict_distributed

        cluster = ClusterConfig(scheduler=args.scheduler, workers=args.workers or 2,
                                threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                                tiles_per_task=args.tiles_per_task, timeout=args.timeout,
                                tune_allocator=args.tune_allocator)
        summary = predict_distributed(args.model, args.image, args.out, config=config, cluster=cluster,
                                      axes=args.axes, progress=not args.quiet)
        print(f"wrote {args.out}: {summary.tiles_computed} of {summary.tiles_total} tiles in {summary.tasks} tasks on "
              f"{summary.workers} workers, {summary.seconds:.1f} s ({summary.voxels_per_second:.3g} voxels/s)")
        return 0
    report: list[PredictionReport] = []
    predict(model, args.image, args.out, config=config, axes=args.axes, progress=not args.quiet, report=report)
    done = report[0]
    print(f"wrote {args.out}: {done.tiles_computed} of {done.tiles_total} tiles computed in {done.seconds:.1f} s "
          f"(core {done.grid.core}, halo {done.grid.halo}, {done.grid.compute_ratio:.2f}× voxels computed)")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from seamfree.diagnostics import DiagnoseConfig, diagnose
    from seamfree.diagnostics.report import write_report
    from seamfree.models import load_model
    from seamfree.tiling import IntensityNormalization

    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    config = DiagnoseConfig(
        core=args.core, halo=args.halo if args.halo is not None else "auto", offset=args.offset,
        normalization=IntensityNormalization(args.normalization), patch_size=args.patch_size,
        batch_size=args.batch_size, ted_batches=args.ted_batches, threshold=args.threshold, device=args.device,
        seed=args.seed,
    )
    diagnosis = diagnose(model, args.image, ground_truth=args.gt, config=config, axes=args.axes,
                         name=args.name or Path(args.model).stem)
    page = write_report(diagnosis, args.out)
    tm, ted = diagnosis.tile_mismatch, diagnosis.disparity
    print(f"{diagnosis.recommendation.verdict}: {diagnosis.recommendation.message}")
    for action in diagnosis.recommendation.actions:
        print(f"  -> {action}")
    print(f"TM_dice {tm.dice:.3g}  TM_abs {tm.abs:.2g}  TED_dice {ted.dice:.3g}  TED_abs {ted.abs:.2g}  "
          f"seam score {diagnosis.seams.score if diagnosis.seams.score is None else round(diagnosis.seams.score, 3)}"
          f"  max|tiled-whole| {diagnosis.exactness.max_abs:.2g}")
    print(f"report: {page} (JSON: {Path(args.out) / 'report.json'})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from seamfree.training import load_config, train

    overrides = list(args.set or [])
    for key, value in (("output", args.out), ("training.iterations", args.iterations),
                       ("training.device", args.device), ("model.norm", args.norm)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, progress=not args.quiet)
    dice = "n/a" if result.best_dice is None else f"{result.best_dice:.4f}"
    print(f"trained {result.iterations} iterations in {result.seconds:.0f} s; best validation Dice {dice}; "
          f"checkpoints {result.best} and {result.last}")
    return 0


def _cmd_recalibrate(args: argparse.Namespace) -> int:
    from seamfree.models import load_model, model_metadata, save_model
    from seamfree.training.recalibrate import recalibrate_on_images

    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    metadata = model_metadata(model)
    patch = args.patch_size or metadata.get("patch_size") or 128
    recalibrate_on_images(model, args.images, patch_size=patch, batch_size=args.batch_size, batches=args.batches,
                          seed=args.seed, device=args.device)
    path = save_model(model, args.out, metadata={**metadata, "recalibrated_on": [str(i) for i in args.images]})
    print(f"wrote {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from seamfree.study.demo import run_demo

    result = run_demo(args.out, iterations=args.iterations, image_size=args.image_size, progress=not args.quiet)
    print(f"\nreport: {result.report}")
    for d in result.diagnoses:
        tm, ted = d.tile_mismatch, d.disparity
        print(f"  {d.name:18s} {d.recommendation.verdict:20s} TM_dice {tm.dice:.3g}  TM_abs {tm.abs:.2g}  "
              f"TED_dice {ted.dice:.2g}  seam score {d.seams.score:.2f}  Dice {d.dice:.3f}")
    print("Open the report in a browser: the InstanceNorm prediction and its mismatch map show the tile grid "
          "(seams), the BatchRenorm ones do not (tile mismatch 0: tiled = whole-image prediction).")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from seamfree.study import describe_hardware, load_study_config, plan_runs, run_directories, run_study
    from seamfree.study.results import write_results

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
    command = (f"seamfree study {f'{args.config} ' if args.config else ''}--profile {config.profile} "
               f"--out {args.out} --results {results}")
    page = write_results(result.rows, results,
                         run_dirs=run_directories(config, args.out), command=command, profile=config.profile,
                         hardware=describe_hardware(config.device))
    done = sum(row["status"] == "done" for row in result.rows)
    print(f"\n{len(result.ran)} run(s) trained and measured, {len(result.cached)} from the cache, "
          f"{len(result.failed)} failed; {done} of {len(result.rows)} runs of profile {config.profile} done")
    print(f"table:   {result.table}\nresults: {page}")
    if result.failed:
        print("failed runs (their errors are in the table; rerun the command to retry them): "
              + ", ".join(result.failed), file=sys.stderr)
        return 1
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
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


def _add_diagnose(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("diagnose", help="will tiling hurt this model on this image? TM, TED, seams, report")
    p.add_argument("model", type=Path)
    p.add_argument("image", help="image (.zarr, .tif, .h5 with --key, .npy)")
    p.add_argument("--gt", help="ground-truth mask of the image (adds Dice and ΔDice)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html, report.json, figures/)")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, YXC")
    p.add_argument("--core", type=_int_tuple, help="core of the diagnosis grid (default: predict's, ≤ half the image)")
    p.add_argument("--halo", type=_int_tuple, help="halo (default: measured receptive field)")
    p.add_argument("--offset", type=_int_tuple, help="shift of the second grid (default: half a core)")
    p.add_argument("--patch-size", type=_int_tuple, help="TED patch size (default: from the checkpoint)")
    p.add_argument("--batch-size", type=int, help="TED batch size (default: from the checkpoint, else 2)")
    p.add_argument("--ted-batches", type=int, default=8)
    p.add_argument("--normalization", choices=["percentile", "meanstd", "none", "per_tile"], default="percentile")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="model name in the report (default: the file name)")
    p.add_argument("--allow-pickle", action="store_true")
    p.set_defaults(handler=_cmd_diagnose)


def _add_training(commands: argparse._SubParsersAction) -> None:
    t = commands.add_parser("train", help="train a 2D/3D U-Net (or small ViT) with any normalization")
    t.add_argument("config", type=Path, nargs="?", help="YAML configuration (see examples/train.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.batch_size=2")
    t.add_argument("--out", help="output folder (overrides output)")
    t.add_argument("--iterations", type=int)
    t.add_argument("--norm", help="normalization (overrides model.norm)")
    t.add_argument("--device")
    t.add_argument("--resume", action="store_true", help="continue from the output folder's state.pt")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(handler=_cmd_train)

    r = commands.add_parser("recalibrate", help="re-estimate a model's running statistics on your images")
    r.add_argument("model", type=Path)
    r.add_argument("images", nargs="+", help="images of the target domain")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--patch-size", type=_int_tuple, help="default: the training patch size from the checkpoint")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--batches", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--allow-pickle", action="store_true")
    r.set_defaults(handler=_cmd_recalibrate)

    d = commands.add_parser("demo", help="train InstanceNorm and BatchRenorm U-Nets on synthetic data and show "
                            "their seams side by side (a few minutes on a CPU, no download)")
    d.add_argument("--out", type=Path, default=Path("seamfree-demo"))
    d.add_argument("--iterations", type=int, default=300)
    d.add_argument("--image-size", type=int, default=1024)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(handler=_cmd_demo)


def _add_study(commands: argparse._SubParsersAction) -> None:
    s = commands.add_parser("study", help="reproduce the paper's trade-off on real data: norms x batch sizes x "
                            "datasets, ViT, 3D, transfer; a CSV and a results page")
    s.add_argument("config", type=Path, nargs="?", help="YAML changing the profile (see examples/study.yaml)")
    s.add_argument("--profile", default="quick", help="quick (minutes), standard (~1.5 h on 2 CPU cores) or full "
                   "(paper-scale; use a GPU)")
    s.add_argument("--out", type=Path, default=Path("seamfree-study"), help="output folder; rerun to resume")
    s.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only runs whose name matches (and the runs they start from), e.g. 'grid/isbi2012/*'")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. grid.batch_sizes=[1,8]")
    s.add_argument("--results", type=Path, help="results page to write (default: OUT/results.md)")
    s.add_argument("--list", action="store_true", help="list the runs and which are done; run nothing")
    s.add_argument("--report-only", action="store_true",
                   help="write the table and the results page from the runs already done; run nothing")
    s.add_argument("--device", help="cpu or cuda")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.set_defaults(handler=_cmd_study)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="seamless tiled prediction of a 2D/3D image of any size")
    p.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    p.add_argument("image", help="input: .zarr/OME-Zarr, .tif, .h5 (with --key) or .npy")
    p.add_argument("out", type=Path, help="output: .zarr (OME-Zarr) or .tif; rerun to resume")
    p.add_argument("--axes", help="axis order of the input, e.g. ZYX, CYX, YXC (default: channel-first)")
    p.add_argument("--core", type=_int_tuple, help="core shape, e.g. 512 or 32,256,256 (default: from memory)")
    p.add_argument("--pin-core", action="store_true", help="error if --core is not a multiple of the stride")
    p.add_argument("--halo", type=_int_tuple, help="halo per side (default: measured receptive field)")
    p.add_argument("--allow-small-halo", action="store_true", help="accept a halo below the receptive field")
    p.add_argument("--stitching", choices=["crop", "blend"], default="crop")
    p.add_argument("--overlap", type=_int_tuple, help="core overlap for --stitching blend")
    p.add_argument("--blend-window", choices=["linear", "gaussian"], default="linear")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision on CUDA")
    p.add_argument("--tta", action="store_true", help="average over flips of the spatial axes")
    p.add_argument("--normalization", choices=["percentile", "meanstd", "none", "per_tile"], default="percentile")
    p.add_argument("--offset", type=float, help="given intensity offset (skips the statistics pass)")
    p.add_argument("--scale", type=float, help="given intensity scale, with --offset")
    p.add_argument("--output-kind", choices=["float32", "uint8", "mask"], default="float32")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--overwrite", action="store_true", help="delete an existing output instead of resuming")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, help="run on a dask LocalCluster with this many worker processes")
    p.add_argument("--scheduler", help="run on the dask cluster of this scheduler address (tcp://host:8786)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--memory-limit", default="auto", help="LocalCluster memory per worker, e.g. 1GiB")
    p.add_argument("--tiles-per-task", type=int, default=4)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the scheduler")
    p.add_argument("--tune-allocator", action="store_true",
                   help="spawn LocalCluster workers with seamfree's glibc settings: faster 3D tiles, but each worker "
                        "keeps its peak memory (give it more than --memory-limit 1GiB)")
    p.set_defaults(handler=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``seamfree`` command."""
    parser = argparse.ArgumentParser(
        prog="seamfree", description="Segmentation of very large images, free of tiling artifacts."
    )
    parser.add_argument("--version", action="version", version=f"seamfree {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    audit = commands.add_parser("audit", help="list the normalization layers of a model and whether they make "
                                "predictions depend on the tile")
    audit.add_argument("model", type=Path, help="checkpoint (seamfree, TorchScript or pickled module)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.add_argument("--allow-pickle", action="store_true", help="load a pickled nn.Module you trust")
    audit.set_defaults(handler=_cmd_audit)

    convert = commands.add_parser("convert", help="convert a model's BatchNorm layers to BatchRenorm (exact)")
    convert.add_argument("model", type=Path)
    convert.add_argument("--to", default="batchrenorm", choices=["batchrenorm", "batch"])
    convert.add_argument("--from", dest="from_", default="batch", choices=["batch", "batchrenorm"])
    convert.add_argument("--out", type=Path, required=True, help="path of the converted checkpoint")
    convert.add_argument("--allow-pickle", action="store_true")
    convert.set_defaults(handler=_cmd_convert)

    _add_predict(commands)
    _add_diagnose(commands)
    _add_training(commands)
    _add_study(commands)
    data = commands.add_parser("data", help="public datasets: list, info (source, licence, citation), fetch")
    data.add_argument("action", choices=["list", "info", "fetch"])
    data.add_argument("name", nargs="?", help="dataset name (see `seamfree data list`)")
    data.add_argument("-q", "--quiet", action="store_true")
    data.set_defaults(handler=_cmd_data)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    from seamfree.tiling.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # before torch or any reader starts a thread
    try:
        return int(args.handler(args))
    except (SeamfreeError, argparse.ArgumentTypeError) as exc:
        if args.verbose:
            raise
        print(f"seamfree {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"seamfree {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
