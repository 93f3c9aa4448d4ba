"""Before a study starts: how long its pending runs should take on this device, and the disk their models need.

Training time is measured, not guessed: a few optimizer steps of every distinct network and batch at its training
patch on the study's device (after warm-up steps), times the iterations. Evaluation time is the forward throughput of
every distinct network at the evaluation core, times the test voxels, times the forwards an evaluation makes per
voxel (:data:`EVALUATION_FORWARDS`, calibrated on the standard profile). Disk: two copies of every trained model
(``model.pt`` and ``best.pt``; the resumable training state is pruned once a training finishes).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from seamfree.study.config import StudyConfig
from seamfree.study.runs import StudyRun

__all__ = ["EVALUATION_FORWARDS", "StudyEstimate", "estimate_study", "measured_voxels"]

# Forwards of the whole test image per evaluation: a full diagnosis (two tilings at two cores, exactness, TED, the
# measurement batches and the blending arm) and an accuracy-only one (one tiling, or three with tile sizes).
# Calibrated on the standard profile on 2 CPU cores (docs/results.md states the measured hours beside them).
EVALUATION_FORWARDS = {"full": 14.0, "accuracy": 1.5, "tile_sizes": 4.0}
TIMED_STEPS = 3
WARMUP_STEPS = 2


@dataclass(frozen=True)
class StudyEstimate:
    """The pending runs' expected training and evaluation seconds and the bytes of their models."""

    runs: int
    trainings: int
    train_seconds: float
    eval_seconds: float
    model_bytes: int
    device: str

    def describe(self) -> str:
        hours = (self.train_seconds + self.eval_seconds) / 3600
        return (f"{self.runs} run(s) to do on {self.device}: about {hours:.1f} h ({self.train_seconds / 3600:.1f} h "
                f"training {self.trainings} model(s), timed here; {self.eval_seconds / 3600:.1f} h evaluation, "
                f"estimated) and {self.model_bytes / 1e9:.2f} GB of new models")


def _network(run: StudyRun, config: StudyConfig) -> torch.nn.Module:
    """The network ``run`` trains or measures (for fine-tuning and measuring runs: the recipe's, of its norm)."""
    from seamfree.training.config import load_config
    from seamfree.training.loop import build_training_model

    if run.train is not None and not run.train["model"].get("checkpoint"):
        mapping = copy.deepcopy(run.train)
    else:
        recipe = config.training
        mapping = {"model": {"architecture": "unet", "spatial_dims": len(recipe.patch_size), "depth": recipe.depth,
                             "features": recipe.features, "norm": run.labels["norm"]},
                   "training": {"patch_size": list(recipe.patch_size), "batch_size": 1}}
    mapping["data"] = {"source": "synthetic"}
    return build_training_model(load_config(base=mapping))


def _step_seconds(model: torch.nn.Module, batch: int, patch: Sequence[int], device: str) -> float:
    model = model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 1, *patch, device=device)
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if step == WARMUP_STEPS:
            _synchronize(device)
            started = time.perf_counter()
        optimizer.zero_grad()
        model(x).float().mean().backward()
        optimizer.step()
    _synchronize(device)
    return (time.perf_counter() - started) / TIMED_STEPS


@torch.no_grad()
def _voxels_per_second(model: torch.nn.Module, tile: Sequence[int], device: str) -> float:
    model = model.to(device).eval()
    x = torch.randn(1, 1, *tile, device=device)
    model(x)
    _synchronize(device)
    started = time.perf_counter()
    model(x)
    _synchronize(device)
    return math.prod(tile) / max(time.perf_counter() - started, 1e-9)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measured_voxels(runs: Sequence[StudyRun]) -> dict[str, int]:
    """Test dataset label → voxels of all the test images a run of ``runs`` measures on it (at most the
    evaluation's ``images``; a region when the evaluation has one)."""
    from seamfree.study.evaluate import load_test_pairs

    voxels: dict[str, int] = {}
    for run in runs:
        label, e = str(run.labels.get("test")), run.evaluation
        if label not in voxels:
            pairs = load_test_pairs(e["dataset"], spatial_dims=e["spatial_dims"], split=e["split"], count=e["images"])
            region = e.get("region")
            voxels[label] = sum(math.prod(image.shape[1:] if not region else
                                          [min(n, r) for n, r in zip(image.shape[1:], region)])
                                for image, _ in pairs)
    return voxels


def estimate_study(config: StudyConfig, runs: Sequence[StudyRun], *, image_voxels: dict[str, int] | None = None,
                   trained: Collection[str] = ()) -> StudyEstimate:
    """Return the estimate of ``runs`` (the pending ones) under ``config``; ``image_voxels``: dataset label → voxels
    of the test images one run measures (default :func:`measured_voxels`); ``trained``: names of runs whose model
    is already trained (only measured)."""
    device = config.device
    voxels = measured_voxels(runs) if image_voxels is None else image_voxels
    steps: dict[str, float] = {}
    sizes: dict[str, int] = {}
    throughput: dict[str, float] = {}
    train_seconds = eval_seconds = 0.0
    model_bytes = trainings = 0
    for run in runs:
        if run.train is not None and run.name not in trained:
            t = run.train["training"]
            key = repr((run.train["model"], run.labels.get("norm"), t["batch_size"], t["patch_size"]))
            if key not in steps:  # each distinct network and batch is built and timed once
                network = _network(run, config)
                steps[key] = _step_seconds(network, t["batch_size"], t["patch_size"], device)
                sizes[key] = sum(v.numel() * v.element_size() for v in network.state_dict().values())
            train_seconds += steps[key] * t["iterations"]
            model_bytes += 2 * sizes[key]
            trainings += 1
        e = run.evaluation
        kind = "full" if e.get("metrics") is None else "tile_sizes" if e.get("tile_sizes") else "accuracy"
        dims = int(e.get("spatial_dims", 2))
        core = [int(c) for c in e["core"]] if isinstance(e["core"], list) else [int(e["core"])] * dims
        key = repr((run.labels.get("architecture"), run.labels.get("norm"), core))
        if key not in throughput:
            throughput[key] = _voxels_per_second(_network(run, config), [c + 96 for c in core], device)
        eval_seconds += EVALUATION_FORWARDS[kind] * voxels.get(str(run.labels.get("test")), 10 << 20) \
            / throughput[key]
    return StudyEstimate(len(runs), trainings, train_seconds, eval_seconds, model_bytes, device)
