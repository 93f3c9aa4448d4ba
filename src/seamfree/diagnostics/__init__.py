"""Diagnostics: tile mismatch, train/eval disparity, seam score, exactness check, recommendation, report."""

from seamfree.diagnostics.diagnose import DiagnoseConfig, Diagnosis, diagnose
from seamfree.diagnostics.disparity import TrainEvalDisparity, train_eval_disparity
from seamfree.diagnostics.exactness import ExactnessCheck, exactness_check
from seamfree.diagnostics.mismatch import TileMismatch, tile_mismatch
from seamfree.diagnostics.recommend import Recommendation, recommend
from seamfree.diagnostics.seams import SeamScore, seam_score

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
