"""`seamfree fix`: time and agreement against the distillation budget, for the demo's InstanceNorm U-Net and a
foreign architecture (MONAI's BasicUNet with instance norm).

    python benchmarks/fix.py [--demo DIR] [--iterations 100,200,400,600] [--figure docs/figures/fix_before_after.png]

Unlabeled images: 4 synthetic 512² nuclei images (the last held out by the fix itself). Judged on a new 768²
image: max |tiled − whole| at core 128, Dice of the fixed model's whole-image mask to the original's, and both
models' Dice to the ground truth. Writes benchmarks/results/fix.json (and the before/after figure). Run alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from seamfree.data.synthetic import SyntheticSpec, synthetic_image
from seamfree.fix import FixConfig, fix_model
from seamfree.models import load_model
from seamfree.study.demo import DEMO_CONDITIONS, run_demo
from seamfree.tiling import PredictConfig, predict, predict_whole


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _judge(original: torch.nn.Module, fixed: torch.nn.Module, image: np.ndarray, truth: np.ndarray,
           activation: str) -> dict[str, float]:
    whole = np.squeeze(predict_whole(fixed, image, activation=activation))
    tiled = np.squeeze(predict(fixed, image, config=PredictConfig(core=128, activation=activation)))
    teacher = np.squeeze(predict_whole(original, image, activation=activation))
    return {"tile_error": float(np.abs(tiled - whole).max()), "dice_to_original": _dice(whole > 0.5, teacher > 0.5),
            "dice_gt_original": _dice(teacher > 0.5, truth), "dice_gt_fixed": _dice(whole > 0.5, truth)}


def _monai(iterations: int) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 16, 32, 8),
                    norm=("instance", {"affine": True}))
    pairs = [synthetic_image((256, 256), SyntheticSpec("nuclei", **DEMO_CONDITIONS), seed=300 + i) for i in range(6)]
    rng = np.random.default_rng(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(iterations):
        batch, target = [], []
        for _ in range(4):
            image, mask = pairs[int(rng.integers(len(pairs)))]
            low, high = np.percentile(image, [1, 99.8])
            y, x = rng.integers(0, 256 - 64, size=2)
            batch.append((image[y:y + 64, x:x + 64] - low) / (high - low))
            target.append(mask[y:y + 64, x:x + 64])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net(torch.from_numpy(np.stack(batch)[:, None].astype(np.float32))),
            torch.from_numpy(np.stack(target)[:, None].astype(np.float32)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def _figure(original: torch.nn.Module, fixed: torch.nn.Module, image: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for net in (original, fixed):
        whole = np.squeeze(predict_whole(net, image))
        tiled = np.squeeze(predict(net, image, config=PredictConfig(core=128)))
        panels.append((tiled, np.abs(tiled - whole)))
    figure, axes = plt.subplots(2, 2, figsize=(9, 9))
    crop = (slice(192, 448), slice(192, 448))  # a seam crossing of the 128 grid
    for row, (label, (tiled, gap)) in enumerate(zip(("original (InstanceNorm)", "fixed (BatchRenorm)"), panels)):
        axes[row, 0].imshow(tiled[crop], cmap="magma", vmin=0, vmax=1)
        axes[row, 0].set_title(f"{label}: tiled at core 128")
        shown = axes[row, 1].imshow(gap[crop], cmap="viridis", vmin=0, vmax=max(0.05, float(panels[0][1].max())))
        axes[row, 1].set_title(f"|tiled − whole|, max {gap.max():.2g}")
        figure.colorbar(shown, ax=axes[row, 1], shrink=0.8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("seamfree-demo"),
                        help="a `seamfree demo` folder (made there if it has no train-instance/best.pt)")
    parser.add_argument("--iterations", default="100,200,400,600")
    parser.add_argument("--foreign-iterations", type=int, default=400)
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/fix_before_after.png"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fix.json")
    args = parser.parse_args()
    if not (args.demo / "train-instance" / "best.pt").exists():
        run_demo(args.demo)
    original = load_model(args.demo / "train-instance" / "best.pt")
    images = [synthetic_image((512, 512), SyntheticSpec("nuclei", **DEMO_CONDITIONS), seed=500 + i)[0]
              for i in range(4)]
    test, truth = synthetic_image((768, 768), SyntheticSpec("nuclei", **DEMO_CONDITIONS), seed=900)
    rows = []
    best = None
    for budget in (int(v) for v in args.iterations.split(",")):
        clock = time.perf_counter()
        result = fix_model(original, images, config=FixConfig(iterations=budget))
        seconds = time.perf_counter() - clock
        judged = _judge(original, result.model, test, truth > 0, "sigmoid")
        row = {"model": "demo InstanceNorm U-Net", "iterations": budget, "steps_run": result.iterations,
               "seconds": seconds, "held_out_dice": result.agreement.dice if result.agreement else None, **judged}
        print(json.dumps(row), flush=True)
        rows.append(row)
        best = result.model
    clock = time.perf_counter()
    foreign = _monai(300)
    foreign_result = fix_model(foreign, images, config=FixConfig(iterations=args.foreign_iterations,
                                                                 activation="sigmoid"))
    row = {"model": "MONAI BasicUNet (instance norm)", "iterations": args.foreign_iterations,
           "steps_run": foreign_result.iterations, "seconds": time.perf_counter() - clock,
           "held_out_dice": foreign_result.agreement.dice if foreign_result.agreement else None,
           **_judge(foreign, foreign_result.model, test, truth > 0, "sigmoid")}
    print(json.dumps(row), flush=True)
    rows.append(row)
    if best is not None and args.figure:
        _figure(original, best, test, args.figure)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "torch_threads": torch.get_num_threads(),
                                    "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
