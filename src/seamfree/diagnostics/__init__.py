"""Diagnostics: tile mismatch, train/eval disparity, seam score, exactness check, recommendation, report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seamfree._lazy import lazy_exports

if TYPE_CHECKING:
    from seamfree.diagnostics.diagnose import DiagnoseConfig, Diagnosis, diagnose
    from seamfree.diagnostics.disparity import TrainEvalDisparity, train_eval_disparity
    from seamfree.diagnostics.exactness import ExactnessCheck, exactness_check
    from seamfree.diagnostics.mismatch import TileMismatch, tile_mismatch
    from seamfree.diagnostics.recommend import Recommendation, recommend
    from seamfree.diagnostics.seams import SeamScore, seam_score

# public name -> module that defines it, imported on first use (a reader importing a light module of
# this package does not import torch)
_EXPORTS = {
    "DiagnoseConfig": "seamfree.diagnostics.diagnose",
    "Diagnosis": "seamfree.diagnostics.diagnose",
    "diagnose": "seamfree.diagnostics.diagnose",
    "TrainEvalDisparity": "seamfree.diagnostics.disparity",
    "train_eval_disparity": "seamfree.diagnostics.disparity",
    "ExactnessCheck": "seamfree.diagnostics.exactness",
    "exactness_check": "seamfree.diagnostics.exactness",
    "TileMismatch": "seamfree.diagnostics.mismatch",
    "tile_mismatch": "seamfree.diagnostics.mismatch",
    "Recommendation": "seamfree.diagnostics.recommend",
    "recommend": "seamfree.diagnostics.recommend",
    "SeamScore": "seamfree.diagnostics.seams",
    "seam_score": "seamfree.diagnostics.seams",
}

__all__ = [
    "DiagnoseConfig",
    "Diagnosis",
    "ExactnessCheck",
    "Recommendation",
    "SeamScore",
    "TileMismatch",
    "TrainEvalDisparity",
    "diagnose",
    "exactness_check",
    "recommend",
    "seam_score",
    "tile_mismatch",
    "train_eval_disparity",
]

lazy_exports(__name__, _EXPORTS)
