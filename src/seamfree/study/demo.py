"""``seamfree demo``: the newcomer's first command. No download, no GPU, a few minutes on a laptop CPU.

It trains two identical small 2D U-Nets on synthetic nuclei images, one with InstanceNorm and one with
BatchRenorm, then predicts a larger synthetic image tiled with both and writes one diagnosis report with the
two side by side. The images contain what exposes per-tile normalization: a background gradient, an empty
region, bright debris and a brightness shift between the two halves. Expected: InstanceNorm shows seams
(positive tile mismatch), BatchRenorm is seamless (tile mismatch at floating-point noise) with a small
train/eval disparity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seamfree.data.synthetic import SyntheticSpec, synthetic_image
from seamfree.diagnostics.diagnose import DiagnoseConfig, Diagnosis, diagnose
from seamfree.diagnostics.report import write_report
from seamfree.io.owned import claim, record
from seamfree.models.checkpoint import load_model
from seamfree.training.config import load_config
from seamfree.training.loop import train

__all__ = ["DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_CONDITIONS: dict[str, Any] = {"object_size": 7.0, "gradient": 0.3, "empty_fraction": 0.15, "debris": 6,
                                   "region_shift": 0.15}


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its report, and the two diagnoses."""

    report: Path
    diagnoses: tuple[Diagnosis, ...]


class _Expected(logging.Filter):
    """Drops the two warnings the demo causes on purpose: its InstanceNorm model depends on the tile, and its
    BatchRenorm warm-up is short (a 300-iteration run). Anything else still reaches the user."""

    PREFIXES = ("this model's predictions depend on the tile", "BatchRenorm warm-up of")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


@contextmanager
def _without_expected_warnings() -> Iterator[None]:
    loggers = [logging.getLogger("seamfree.tiling.plan"), logging.getLogger("seamfree.training.loop")]
    expected = _Expected()
    for logger_ in loggers:
        logger_.addFilter(expected)
    try:
        yield
    finally:
        for logger_ in loggers:
            logger_.removeFilter(expected)


def run_demo(out_dir: str | Path = "seamfree-demo", *, iterations: int = 300, image_size: int = 1024,
             core: int = 128, seed: int = 0, progress: bool = False) -> DemoResult:
    """Train the InstanceNorm and BatchRenorm U-Nets, diagnose both on a large image; return the report path."""
    with _without_expected_warnings():
        return _run(Path(out_dir), iterations, image_size, core, seed, progress)


def _run(out: Path, iterations: int, image_size: int, core: int, seed: int, progress: bool) -> DemoResult:
    folders = [f"train-{norm}" for norm in _NORMS]
    claim(out, [*folders, "report"], what="seamfree demo", legacy=_legacy_demo,
          fix="choose another demo folder (--out), or move those folders away")
    diagnoses = []
    image, mask = synthetic_image((image_size, image_size), SyntheticSpec("nuclei", **DEMO_CONDITIONS),
                                  seed=seed + 10_000)
    for norm in _NORMS:
        out.mkdir(parents=True, exist_ok=True)
        record(out, {f"train-{norm}": "folder"})
        config = load_config(base={
            "data": {"source": "synthetic", "synthetic_kind": "nuclei", "synthetic_shape": [256, 256],
                     "synthetic_train": 6, "synthetic_val": 1, "synthetic_options": DEMO_CONDITIONS, "seed": seed},
            "model": {"depth": 3, "features": 8, "norm": norm,
                      # a short run: faster-moving running statistics, warm-up over the first 30 %
                      "norm_options": {"momentum": 0.05} if norm == "batchrenorm" else {}},
            "training": {"iterations": iterations, "batch_size": 4, "patch_size": [64, 64],
                         "learning_rate": 3e-3, "validate_every": iterations, "renorm_warmup": 0.3,
                         "renorm_ramp": 0.3, "seed": seed, "val_core": 128},
            "output": str(out / f"train-{norm}"),
        })
        logger.info("training the %s U-Net (%d iterations)", norm, iterations)
        result = train(config, overwrite=True, progress=progress)  # the demo's own folders: rerunnable
        model = load_model(result.last)
        logger.info("diagnosing the %s U-Net on a %d² image", norm, image_size)
        diagnoses.append(diagnose(model, image, ground_truth=mask, name=f"{norm} U-Net",
                                  config=DiagnoseConfig(core=core, patch_size=64, batch_size=4, seed=seed)))
    record(out, {"report": "folder"})
    report = write_report(diagnoses, out / "report")
    return DemoResult(report, tuple(diagnoses))


_NORMS = ("instance", "batchrenorm")


def _legacy_demo(path: Path) -> bool:
    """A folder of a demo run before demo folders recorded what seamfree wrote: its report is seamfree's."""
    page = path.parent / "report" / "report.html"
    try:
        return page.is_file() and "<title>seamfree diagnosis" in page.read_text(errors="replace")[:4096]
    except OSError:
        return False
