"""Tiled prediction: seamfree crop/blend vs whole-image forward vs MONAI sliding_window_inference.

Usage::

    python benchmarks/tiling.py [--cases 2d 3d memory] [--repeats 3] [--out benchmarks/results/tiling.json]

Same BatchRenorm U-Net (eval mode, non-trivial running statistics) and image for every method; each method
runs in a fresh subprocess so its peak RSS is its own. Reported: median wall time over repeats (and the ratio
to the whole-image forward), peak RSS, max |Δprob| and the fraction of voxels whose thresholded prediction
flips, both against the whole-image prediction. The ``memory`` case predicts zarr → zarr at two volume sizes
to show that peak memory does not grow with the image. Needs the ``bench`` extra (MONAI) for the MONAI rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seamfree.io import open_image
from seamfree.models import UNet
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import (
    IntensityNormalization,
    PredictConfig,
    compute_normalization,
    measure_receptive_field,
    predict,
    predict_whole,
)

CASES = {
    "2d": {"shape": (4096, 4096), "core": (2048, 2048), "unet": {"spatial_dims": 2, "depth": 4, "features": 16}},
    "3d": {"shape": (128, 512, 512), "core": (128, 256, 256), "unet": {"spatial_dims": 3, "depth": 3, "features": 8}},
}
METHODS = ["whole", "crop", "crop_auto", "blend", "monai_0.25", "monai_0.5"]
SMALL = {  # --small: a smoke test of the script itself, not a measurement
    "2d": {"shape": (512, 512), "core": (256, 256), "unet": CASES["2d"]["unet"]},
    "3d": {"shape": (32, 128, 128), "core": (32, 64, 64), "unet": CASES["3d"]["unet"]},
}


def _model(spec: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    net = UNet(spec["spatial_dims"], 1, 1, depth=spec["depth"], features=spec["features"], norm="batchrenorm")
    return randomize_norm_statistics(net).eval()


def _image(shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random structures (blurred noise), uint8, deterministic."""
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(size=(1, 1, *shape)).astype(np.float32))
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    smooth = pool(noise, 9, stride=1, padding=4)[0, 0].numpy()
    return np.clip(128 + smooth * 300, 0, 255).astype(np.uint8)


def worker(case: str, method: str, workdir: Path) -> dict[str, Any]:
    """Run one method once; return its timing and fidelity (called in a subprocess)."""
    torch.set_num_threads(2)
    spec = CASES[case]
    model = _model(spec["unet"])
    image = np.load(workdir / f"{case}_image.npy", mmap_mode="r")
    normalization = compute_normalization(open_image(np.asarray(image), spatial_dims=image.ndim))
    core = spec["core"]
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "whole":
        prediction = predict_whole(model, image, normalization=normalization)
    elif method in ("crop", "crop_auto", "blend"):
        config = PredictConfig(core=None if method == "crop_auto" else core, normalization=normalization,
                               stitching="blend" if method == "blend" else "crop", tiles_per_batch=1,
                               halo=0 if method == "blend" else "auto", allow_small_halo=method == "blend")
        report: list[Any] = []
        prediction = predict(model, image, config=config, report=report)
        extra = {"tile_shape": list(report[0].grid.tile_shape), "halo": list(report[0].grid.halo),
                 "compute_ratio": report[0].grid.compute_ratio}
    else:
        from monai.inferers import sliding_window_inference

        overlap = float(method.split("_")[1])
        halo = measure_receptive_field(model).halo  # roi = seamfree's tile shape
        roi = tuple(min(c + 2 * h, s) for c, h, s in zip(core, halo, image.shape))
        x = torch.from_numpy(normalization.apply(np.asarray(image)[np.newaxis]))[np.newaxis]
        with torch.inference_mode():
            logits = sliding_window_inference(x, roi, 1, model, overlap=overlap, mode="gaussian")
        prediction = torch.sigmoid(logits)[0].numpy()
        extra = {"roi": list(roi)}
    return measured(time.perf_counter() - start, extra, prediction, workdir / f"{case}_whole.npy", method == "whole")


def measured(seconds: float, extra: dict[str, Any], prediction: np.ndarray, reference_path: Path,
             is_reference: bool) -> dict[str, Any]:
    """A worker's result: time, peak RSS, and, unless it is the whole-image reference (then saved to
    ``reference_path``), max |Δ| and flipped voxels against that reference."""
    result = {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}
    if is_reference:
        np.save(reference_path, prediction)
        return result
    reference = np.load(reference_path, mmap_mode="r")
    values = np.asarray(prediction, dtype=np.float32)
    flips = (values > 0.5) != (reference > 0.5)
    result.update(max_abs_diff=float(np.abs(values - reference).max()), flip_fraction=float(flips.mean()),
                  flipped_voxels=int(np.count_nonzero(flips)))
    return result


def memory_worker(depth_slices: int, workdir: Path) -> dict[str, Any]:
    """Predict a zarr volume of ``depth_slices`` × 512 × 512 into zarr; return time and peak RSS."""
    import zarr

    torch.set_num_threads(2)
    source = workdir / f"volume_{depth_slices}.zarr"
    # A shallow net (halo 24) so that tiles are much smaller than both volumes: memory must then depend on the
    # tile only, not on the volume.
    model = _model({"spatial_dims": 3, "depth": 2, "features": 4})
    config = PredictConfig(core=(32, 128, 128), tiles_per_batch=1, normalization=IntensityNormalization(
        "percentile", offset=(0.0,), scale=(255.0,)))
    start = time.perf_counter()
    predict(model, source, workdir / f"pred_{depth_slices}.zarr", config=config)
    seconds = time.perf_counter() - start
    written = zarr.open_group(str(workdir / f"pred_{depth_slices}.zarr"), mode="r").attrs["seamfree"]["status"]
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "voxels": depth_slices * 512 * 512, "status": written}


def _subprocess(args: list[str]) -> dict[str, Any]:
    completed = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_case(case: str, repeats: int, workdir: Path, methods: list[str]) -> dict[str, Any]:
    np.save(workdir / f"{case}_image.npy", _image(CASES[case]["shape"]))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(repeats):
        for method in methods:
            small = ["--small"] if CASES[case] is SMALL.get(case) else []
            runs[method].append(_subprocess([*small, "--worker", case, method, str(workdir)]))
            print(f"  {case} {method}: {runs[method][-1]['seconds']:.1f} s", flush=True)
    whole = statistics.median(r["seconds"] for r in runs["whole"])
    table = {}
    for method, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        row = {**results[-1], "median_seconds": seconds, "ratio_to_whole": seconds / whole,
               "all_seconds": [r["seconds"] for r in results],
               "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
        row.pop("seconds")
        table[method] = row
    return {"shape": list(CASES[case]["shape"]), "core": list(CASES[case]["core"]), "methods": table}


def run_memory(workdir: Path, sizes: tuple[int, ...]) -> dict[str, Any]:
    import zarr

    results = {}
    for depth in sizes:
        array = zarr.create_array(str(workdir / f"volume_{depth}.zarr"), shape=(depth, 512, 512),
                                  chunks=(32, 128, 128), dtype="u1")
        for z in range(0, depth, 32):
            array[z:z + 32] = _image((32, 512, 512))
        results[str(depth)] = _subprocess(["--memory-worker", str(depth), str(workdir)])
        print(f"  memory {depth}×512×512: {results[str(depth)]}", flush=True)
    return results


def _print_table(case: str, result: dict[str, Any]) -> None:
    print(f"\n{case}: image {result['shape']}, core {result['core']}")
    print(f"{'method':12s} {'median s':>9s} {'× whole':>8s} {'peak RSS MB':>12s} {'max|Δprob|':>11s} {'flips %':>8s}")
    for method, row in result["methods"].items():
        diff = row.get("max_abs_diff")
        flips = row.get("flip_fraction")
        print(f"{method:12s} {row['median_seconds']:9.1f} {row['ratio_to_whole']:8.2f} {row['peak_rss_mb']:12.0f} "
              f"{'reference' if diff is None else f'{diff:.2e}':>11s} "
              f"{'' if flips is None else f'{100 * flips:.3f}':>8s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["2d", "3d", "memory"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tiling.json")
    parser.add_argument("--small", action="store_true", help="tiny images: check the script, measure nothing")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        CASES.update(SMALL)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], Path(args.worker[2]))))
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(int(args.memory_worker[0]), Path(args.memory_worker[1]))))
        return
    results: dict[str, Any] = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                           "threads": 2, "repeats": args.repeats}}
    with tempfile.TemporaryDirectory(prefix="seamfree-bench-") as tmp:
        workdir = Path(tmp)
        for case in args.cases:
            if case == "memory":
                results["memory"] = run_memory(workdir, (96, 192) if args.small else (128, 384))
            else:
                results[case] = run_case(case, args.repeats, workdir, args.methods)
                _print_table(case, results[case])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))  # after every case: partial runs keep results
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
