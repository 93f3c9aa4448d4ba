"""The seam test's calibration and validation sets, kept apart: other models, other data, other tile sizes.

:func:`seamfree.diagnostics.seam_grid.find_seams` has a handful of design constants (segment length, clipping,
the smallest period, the false-alarm rate). They were chosen looking at the **calibration** set only: the demo's
recipe (a depth-3 U-Net with 8 features, InstanceNorm and BatchRenorm, trained on synthetic nuclei) on
synthetic nuclei images, cores 96 and 160. Its rates are measured on the **validation** set, which shares none
of that: other architectures (a depth-4 InstanceNorm U-Net, a GroupNorm U-Net, MONAI's BasicUNet with instance
norm, a BatchRenorm U-Net of another seed), other data (synthetic membranes and sparse nuclei, a real coelho2009
and a real isbi2012 frame), other cores (128, 192), and other stitching (MONAI's Gaussian-blended sliding window).
:func:`check_disjoint` (run by the tests) fails if the two ever share a model, an image or a core.

Truth of a case: *seamed* when it was stitched (crop or blend) from a tile-dependent model and differs from the
whole-image prediction by at least :data:`VISIBLE` somewhere; *clean* when it is an exact output (a whole-image
prediction, seamfree's stitching of a tile-independent model, or a single tile that covered the image). Stitched
cases that differ by less than :data:`VISIBLE` are left out (neither).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.tiling.stitching import CROP

__all__ = ["CALIBRATION", "VALIDATION", "CaseResult", "SeamCase", "check_disjoint", "clopper_pearson",
           "run_cases", "summarize"]

# a blended prediction counts as seamed when it differs from the whole-image one by this much somewhere
VISIBLE = 0.05


@dataclass(frozen=True)
class SeamCase:
    """One prediction to test: which model, which image, how it was stitched (``core`` None: whole image)."""

    model: str
    image: str
    core: int | None
    stitching: str = "crop"  # crop (seamfree) | gaussian (MONAI sliding window, overlap 0.25) | whole


def _grid(models: tuple[str, ...], images: tuple[str, ...], cores: tuple[int, ...],
          stitchings: tuple[str, ...]) -> tuple[SeamCase, ...]:
    cases = [SeamCase(m, i, None, "whole") for m in models for i in images]
    cases += [SeamCase(m, i, c, s) for m in models for i in images for c in cores for s in stitchings]
    return tuple(cases)


CALIBRATION: tuple[SeamCase, ...] = _grid(
    ("demo-instance", "demo-batchrenorm"),
    tuple(f"synthetic-nuclei-demo:{seed}" for seed in (11, 12, 13, 14)),
    (96, 160), ("crop",))

VALIDATION: tuple[SeamCase, ...] = _grid(
    ("unet4-instance", "unet-group", "monai-basicunet-instance", "unet4-batchrenorm"),
    ("synthetic-nuclei-sparse:21", "synthetic-membranes:23", "isbi2012:0", "coelho2009:0"),
    (128, 192), ("crop", "gaussian"))


def check_disjoint(calibration: tuple[SeamCase, ...] = CALIBRATION,
                   validation: tuple[SeamCase, ...] = VALIDATION) -> None:
    """Raise ValueError if the sets share a model, an image (source and seed) or a core."""
    for what in ("model", "image", "core"):
        shared = ({getattr(c, what) for c in calibration} & {getattr(c, what) for c in validation}) - {None}
        if shared:
            raise ValueError(f"the calibration and validation sets share {what}s {sorted(shared)}")


@dataclass(frozen=True)
class CaseResult:
    """A case, its truth, what the test said, and the prediction's largest difference to the whole image."""

    case: SeamCase
    truth: str  # seamed | clean | neither
    detected: bool | str
    period: list[int | None]
    offset: list[int | None]
    expected_offset: list[int | None]
    z: float | None
    max_difference: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.case), "truth": self.truth, "detected": self.detected, "period": self.period,
                "offset": self.offset, "expected_offset": self.expected_offset, "z": self.z,
                "max_difference": self.max_difference, "seconds": self.seconds}


# --- models -------------------------------------------------------------------------------------------------

_MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "demo-instance": {"depth": 3, "features": 8, "norm": "instance", "seed": 0},
    "demo-batchrenorm": {"depth": 3, "features": 8, "norm": "batchrenorm", "seed": 0},
    "unet4-instance": {"depth": 4, "features": 8, "norm": "instance", "seed": 5},
    "unet-group": {"depth": 3, "features": 16, "norm": "group", "seed": 6},
    "unet4-batchrenorm": {"depth": 4, "features": 8, "norm": "batchrenorm", "seed": 7},
}
_DEMO_CONDITIONS: dict[str, Any] = {"object_size": 7.0, "gradient": 0.3, "empty_fraction": 0.15, "debris": 6,
                                    "region_shift": 0.15}


def _train_model(name: str, folder: Path, iterations: int) -> Any:
    """A model of the recipe ``name``, trained on synthetic nuclei (or loaded from ``folder`` if there)."""
    from seamfree.models.checkpoint import load_model

    if name == "monai-basicunet-instance":
        return _train_monai(folder / name, iterations)
    recipe = _MODEL_RECIPES[name]
    out = folder / name
    if (out / "last.pt").exists():
        return load_model(out / "last.pt")
    from seamfree.training.config import load_config
    from seamfree.training.loop import train

    config = load_config(base={
        "data": {"source": "synthetic", "synthetic_kind": "nuclei", "synthetic_shape": [256, 256],
                 "synthetic_train": 6, "synthetic_val": 1, "synthetic_options": _DEMO_CONDITIONS,
                 "seed": recipe["seed"]},
        "model": {"depth": recipe["depth"], "features": recipe["features"], "norm": recipe["norm"],
                  "norm_options": {"momentum": 0.05} if recipe["norm"] == "batchrenorm" else {}},
        "training": {"iterations": iterations, "batch_size": 4, "patch_size": [64, 64], "learning_rate": 3e-3,
                     "validate_every": iterations, "renorm_warmup": 0.3, "renorm_ramp": 0.3,
                     "seed": recipe["seed"], "val_core": 128},
        "output": str(out),
    })
    return load_model(train(config, overwrite=True).last)


def _train_monai(out: Path, iterations: int) -> Any:
    """MONAI's BasicUNet with instance norm, trained by a plain loop on synthetic nuclei patches."""
    import torch
    from monai.networks.nets import BasicUNet

    from seamfree.data.synthetic import SyntheticSpec, synthetic_image

    torch.manual_seed(8)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 32, 64, 8),
                    norm=("instance", {"affine": True}))
    if (out / "weights.pt").exists():
        net.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
        return net.eval()
    images = [synthetic_image((256, 256), SyntheticSpec("nuclei", **_DEMO_CONDITIONS), seed=800 + i)
              for i in range(6)]
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(8)
    for _ in range(iterations):
        batch, target = [], []
        for _ in range(4):
            image, mask = images[int(rng.integers(len(images)))]
            y, x = rng.integers(0, 256 - 64, size=2)
            patch = image[y:y + 64, x:x + 64]
            batch.append((patch - patch.mean()) / (patch.std() + 1e-6))
            target.append(mask[y:y + 64, x:x + 64])
        inputs = torch.from_numpy(np.stack(batch)[:, None].astype(np.float32))
        labels = torch.from_numpy(np.stack(target)[:, None].astype(np.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "weights.pt")
    return net.eval()


# --- images -------------------------------------------------------------------------------------------------

def _image(name: str) -> np.ndarray:
    """The image of a case name ``source:seed-or-index`` (2D float32 or the stored integer type)."""
    from seamfree.data.synthetic import SyntheticSpec, synthetic_image

    source, _, index = name.partition(":")
    number = int(index)
    if source == "synthetic-nuclei-demo":
        return synthetic_image((1024, 1024), SyntheticSpec("nuclei", **_DEMO_CONDITIONS), seed=number)[0]
    if source == "synthetic-nuclei-sparse":
        spec = SyntheticSpec("nuclei", object_size=9.0, density=0.1, gradient=0.5, empty_fraction=0.3)
        return synthetic_image((900, 1100), spec, seed=number)[0]
    if source == "synthetic-membranes":
        return synthetic_image((1000, 1000), SyntheticSpec("membranes", object_size=30.0), seed=number)[0]
    from seamfree.data.datasets import load_dataset

    pairs = load_dataset(source, "test")
    return np.asarray(pairs[number][0])[0]


# --- running ------------------------------------------------------------------------------------------------

def _predict(model: Any, image: np.ndarray, case: SeamCase) -> np.ndarray:
    """The case's prediction (probabilities, one channel) of ``image``."""
    from seamfree.tiling.plan import PredictConfig
    from seamfree.tiling.predict import predict, predict_whole

    if case.stitching == "whole":
        return np.squeeze(predict_whole(model, image, activation="sigmoid")).astype(np.float32)
    if case.stitching == CROP.name:
        config = PredictConfig(core=case.core, activation="sigmoid", tile_timing=False)
        return np.squeeze(predict(model, image, config=config)).astype(np.float32)
    import torch
    from monai.inferers import sliding_window_inference

    from seamfree.io.readers import open_image
    from seamfree.tiling.normalize import IntensityNormalization, compute_normalization

    normalization = compute_normalization(open_image(image[np.newaxis], spatial_dims=2),
                                          IntensityNormalization("percentile"))
    normalized = normalization.apply(image[np.newaxis].astype(np.float32))
    roi = int(case.core or 0)
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(normalized[np.newaxis]).float(), (roi, roi), 4,
                                          model.eval(), overlap=0.25, mode="gaussian")
    return torch.sigmoid(torch.as_tensor(logits))[0, 0].numpy().astype(np.float32)


def _expected_offset(case: SeamCase, shape: tuple[int, ...]) -> list[int | None]:
    """Where the first seam lies per axis: seamfree's cores start at 0; MONAI's windows step by 0.75 roi."""
    if case.core is None:
        return [None] * len(shape)
    if case.stitching == CROP.name:
        return [0 for _ in shape]
    step = max(1, math.floor(case.core * 0.75))  # where two Gaussian weights are equal: mid-overlap
    return [((step + case.core) // 2) % step for _ in shape]


def run_cases(cases: tuple[SeamCase, ...], folder: str | Path, *, iterations: int = 300,
              progress: Callable[[str], None] | None = None) -> Iterator[CaseResult]:
    """Run every case (training each model once into ``folder``) and yield what the test said about it."""
    from seamfree.diagnostics.seam_grid import find_seams

    models: dict[str, Any] = {}
    wholes: dict[tuple[str, str], np.ndarray] = {}
    folder = Path(folder)
    for case in sorted(cases, key=lambda c: (c.model, c.image, c.core or 0, c.stitching)):
        if case.model not in models:
            models[case.model] = _train_model(case.model, folder, iterations)
        model = models[case.model]
        image = _image(case.image)
        key = (case.model, case.image)
        if key not in wholes:
            wholes = {key: _predict(model, image, SeamCase(case.model, case.image, None, "whole"))}
        prediction = _predict(model, image, case)
        difference = float(np.max(np.abs(prediction - wholes[key])))
        clock = time.perf_counter()
        found = find_seams(prediction)
        seconds = time.perf_counter() - clock
        yield CaseResult(case, _truth(case, difference), found.detected, found.period, found.offset,
                         _expected_offset(case, prediction.shape), found.z, difference, seconds)
        if progress is not None:
            progress(f"{case}: {found.summary}")


def _truth(case: SeamCase, difference: float) -> str:
    """Seamed, clean or neither, from how the case was made and how far it is from the whole-image prediction."""
    if case.stitching == "whole":
        return "clean"
    if case.stitching == CROP.name and ("batchrenorm" in case.model or difference == 0.0):
        return "clean"  # exact: a tile-independent model, or one tile covered the image
    return "seamed" if difference >= VISIBLE else "neither"


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a rate (both ends, ``level`` coverage)."""
    from scipy.stats import beta

    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    """Sensitivity on the seamed cases, false-alarm rate on the clean ones, with exact 95 % intervals."""
    seamed = [r for r in results if r.truth == "seamed"]
    clean = [r for r in results if r.truth == "clean"]
    hits = sum(r.detected is True for r in seamed)
    alarms = sum(r.detected is True for r in clean)
    right_grid = sum(r.detected is True and r.case.stitching == CROP.name and all(
        p is not None and p == r.case.core for p in r.period) for r in seamed)
    crop_hits = sum(r.detected is True and r.case.stitching == CROP.name for r in seamed)
    undecided = sum(r.detected == "cannot tell" for r in results)
    return {
        "seamed": len(seamed), "detected": hits,
        "sensitivity": hits / len(seamed) if seamed else None,
        "sensitivity_ci": list(clopper_pearson(hits, len(seamed))) if seamed else None,
        "clean": len(clean), "false_alarms": alarms,
        "false_alarm_rate": alarms / len(clean) if clean else None,
        "false_alarm_ci": list(clopper_pearson(alarms, len(clean))) if clean else None,
        "crop_detections_with_right_period": f"{right_grid}/{crop_hits}",
        "cannot_tell": undecided,
        "by_stitching": {s: {"seamed": sum(r.case.stitching == s for r in seamed),
                             "detected": sum(r.case.stitching == s and r.detected is True for r in seamed)}
                         for s in sorted({r.case.stitching for r in seamed})},
    }
