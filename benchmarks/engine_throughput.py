"""seamfree's prediction against the model's raw batched forward on random tiles: how close the engine comes to
the device's limit for this model.

    python benchmarks/engine_throughput.py [--device cuda] [--amp] [--channels-last] [--compile]
        [--dims 2] [--repeats 5] [--out benchmarks/results/engine_throughput.json]

The model: the 2D U-Net of ``defaults.py`` (depth 4, 16 features) on a 2048² image, or with ``--dims 3`` the 3D
U-Net (depth 3, 8 features) on 128×512², BatchRenorm in eval mode. seamfree predicts the image with a fixed plan
(``--core``, its tiles and tiles per batch as ``suggest_tiling`` would batch them), and the raw forward runs the
same number of batches of the same tile shape filled with random values, already on the device, with nothing
else: no reading, normalization, copies or stitching. Both are timed after one untimed warm-up (which is where
``--compile`` compiles), with the device synchronized, in one process; medians of ``--repeats``.

Reported: the core voxels per second of each, and ``engine / raw``: 1.0 means the engine adds nothing to the
forward passes it cannot avoid. On CUDA the copies to the GPU overlap the forwards (pinned memory, a copy stream:
``seamfree.tiling.device``), which is what this ratio shows. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seamfree.io import open_image
from seamfree.models import UNet
from seamfree.testing import randomize_norm_statistics
from seamfree.tiling import IntensityNormalization, PredictConfig, eval_mode, predict
from seamfree.tiling.device import compiled, to_memory_format
from seamfree.tiling.plan import plan_prediction

CASES = {2: {"shape": (2048, 2048), "core": 512, "model": {"depth": 4, "features": 16}},
         3: {"shape": (128, 512, 512), "core": (64, 128, 128), "model": {"depth": 3, "features": 8}}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _median_seconds(work: Any, device: str, repeats: int) -> float:
    work()  # warm-up: first touches of memory, cuDNN autotuning, compilation
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--dims", type=int, choices=[2, 3], default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = CASES[args.dims]
    torch.manual_seed(0)
    model = randomize_norm_statistics(UNet(args.dims, 1, 1, norm="batchrenorm", **case["model"])).eval()
    model = model.to(args.device)
    image = np.random.default_rng(0).normal(size=case["shape"]).astype(np.float32)
    config = PredictConfig(core=case["core"], device=args.device, amp=args.amp, channels_last=args.channels_last,
                           compile=args.compile, normalization=IntensityNormalization("none"), tile_timing=False)
    with open_image(image, spatial_dims=args.dims) as source:
        plan = plan_prediction(model, source, config)
    tiles = list(plan.grid.tiles())
    batch = plan.tiles_per_batch
    batches = -(-len(tiles) // batch)
    tile = tuple(s.stop - s.start for s in tiles[0].read)
    noise = to_memory_format(torch.randn((batch, 1, *tile), device=args.device), args.channels_last)
    net = compiled(model) if args.compile else model

    def raw() -> None:
        with eval_mode(model), torch.inference_mode(), torch.autocast(
                noise.device.type, dtype=torch.bfloat16, enabled=args.amp and noise.device.type == "cuda"):
            for _ in range(batches):
                torch.sigmoid(net(noise).float())

    def engine() -> None:
        predict(model, image, config=config)

    raw_seconds = _median_seconds(raw, args.device, args.repeats)
    engine_seconds = _median_seconds(engine, args.device, args.repeats)
    voxels = int(np.prod(case["shape"]))
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "threads": args.threads, "dims": args.dims, "image": list(case["shape"]), "core": list(plan.grid.core),
        "tile": list(tile), "tiles": len(tiles), "tiles_per_batch": batch, "batches": batches,
        "amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
        "raw_seconds": round(raw_seconds, 4), "engine_seconds": round(engine_seconds, 4),
        "raw_voxels_per_second": round(voxels / raw_seconds),
        "engine_voxels_per_second": round(voxels / engine_seconds),
        "engine_over_raw": round(engine_seconds / raw_seconds, 3),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    args.out.write_text(json.dumps({"runs": [*runs, result]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
