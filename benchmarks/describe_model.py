"""Cost of describing a model (``describe_model``: geometry, audit, receptive field, tile probe), first call and
cached, and of ``predict`` on a 2048² image with a cold and a warm description cache.

    python benchmarks/describe_model.py [--size 2048] [--repeats 3] [--out benchmarks/results/describe_model.json]

Models: the depth-4, 16-feature BatchRenorm U-Net of ``benchmarks/diagnose.py`` (eager), and a MONAI
``BasicUNet`` saved as TorchScript (its receptive field is estimated on the compiled model). Medians of
``--repeats`` runs. "first" measures with no cache at all (``SEAMFREE_CACHE=off``: what every call paid before
the caches existed; predict measured the receptive field on every call, diagnose twice); "from disk" is a new
process's first call with the on-disk cache of an earlier one (a fresh cache folder, memory cache cleared);
"cached" a second call in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import seamfree as sf
from seamfree.models import clear_model_cache, describe_model
from seamfree.testing import randomize_norm_statistics


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "describe_model.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = randomize_norm_statistics(sf.UNet(2, 1, 1, depth=4, features=16, norm="batchrenorm")).eval()
    models = {"seamfree UNet (eager)": unet}
    try:
        from monai.networks.nets import BasicUNet

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models["MONAI BasicUNet (TorchScript)"] = torch.jit.script(
                BasicUNet(spatial_dims=2, in_channels=1, out_channels=1).eval())
    except ImportError:
        pass
    results: dict[str, dict[str, float]] = {}
    os.environ["SEAMFREE_CACHE"] = tempfile.mkdtemp(prefix="seamfree-cache-")
    for name, model in models.items():
        cold, disk, warm = [], [], []
        for _ in range(args.repeats):
            clear_model_cache()
            os.environ["SEAMFREE_CACHE"] = "off"
            cold.append(_seconds(lambda m=model: describe_model(m)))
            clear_model_cache()
            os.environ["SEAMFREE_CACHE"] = tempfile.mkdtemp(prefix="seamfree-cache-")
            describe_model(model)  # an earlier process fills the disk cache
            clear_model_cache()
            disk.append(_seconds(lambda m=model: describe_model(m)))
            warm.append(_seconds(lambda m=model: describe_model(m)))
        results[name] = {"describe_first_s": statistics.median(cold), "describe_from_disk_s": statistics.median(disk),
                         "describe_cached_s": statistics.median(warm)}
        print(f"{name:32s} describe_model first {results[name]['describe_first_s']:.3f} s, from the disk cache "
              f"{results[name]['describe_from_disk_s'] * 1e3:.1f} ms, "
              f"cached {results[name]['describe_cached_s'] * 1e3:.3f} ms")
    os.environ["SEAMFREE_CACHE"] = "off"  # predict below: cold = no cache anywhere
    image = np.random.default_rng(0).random((args.size, args.size), dtype=np.float32)
    cold_p, warm_p = [], []
    for _ in range(args.repeats):
        clear_model_cache()
        cold_p.append(_seconds(lambda: sf.predict(unet, image)))
        warm_p.append(_seconds(lambda: sf.predict(unet, image)))
    predict = {"predict_cold_cache_s": statistics.median(cold_p), "predict_warm_cache_s": statistics.median(warm_p)}
    predict["saved_fraction"] = 1 - predict["predict_warm_cache_s"] / predict["predict_cold_cache_s"]
    print(f"predict {args.size}² (seamfree UNet): cold cache {predict['predict_cold_cache_s']:.2f} s, warm cache "
          f"{predict['predict_warm_cache_s']:.2f} s ({predict['saved_fraction']:.1%} saved)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "repeats": args.repeats, "models": results,
                                    "predict": predict, "threads": 2}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
