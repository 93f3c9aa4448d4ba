"""Each of the four verdicts of ``recommend``, from indicators made by hand (the rules, not the measurements)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from seamfree.diagnostics.disparity import TrainEvalDisparity
from seamfree.diagnostics.exactness import ExactnessCheck
from seamfree.diagnostics.mismatch import TileMismatch
from seamfree.diagnostics.recommend import recommend
from seamfree.diagnostics.seams import SeamScore
from seamfree.layers import BatchRenorm2d, audit_norms
from seamfree.tiling import ReceptiveField, TilingSuggestion

RF = ReceptiveField((23, 23), (9, 9), (4, 4), False, 1e-3, (22, 22))
SUGGESTION = TilingSuggestion((512, 512), RF.halo, 1, (560, 560), 1 << 20, 1.2)
MAP = np.zeros((8, 8))


def _mismatch(tm_abs: float, tm_dice: float) -> TileMismatch:
    return TileMismatch(tm_dice, tm_abs, tm_dice, tm_abs, [], (), 64, MAP)


def _disparity(ted_abs: float, ted_dice: float) -> TrainEvalDisparity:
    return TrainEvalDisparity(ted_dice, ted_abs, [], None, None, None, (64, 64), 2, 8, 4)


def _exactness(max_abs: float) -> ExactnessCheck:
    return ExactnessCheck(max_abs, max_abs / 10, 0.0, max_abs <= 1e-5, 1e-5, (slice(0, 8), slice(0, 8)))


SEAMS = SeamScore(1.0, [1.0, 1.0], 0.1, 0.1, 2, MAP)
BATCH = audit_norms(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
INSTANCE = audit_norms(nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2)))
NONE = audit_norms(nn.Sequential(nn.Conv2d(1, 2, 3)))
RENORM = audit_norms(nn.Sequential(nn.Conv2d(1, 2, 3), BatchRenorm2d(2)))


@pytest.mark.parametrize(("audit", "halo", "tm", "ted", "max_abs", "verdict", "says"), [
    (INSTANCE, RF.halo, (0.02, 0.05), (0.0, 0.0), 0.1, "tiling artifacts", "1 InstanceNorm2d layer use per-tile"),
    (BATCH, RF.halo, (0.02, 0.05), (0.0, 0.0), 0.1, "tiling artifacts", "no layer was recognized"),
    (BATCH, (8, 8), (1e-5, 0.0), (0.0, 0.0), 3e-3, "halo too small", "use halo >= (24, 24)"),
    (BATCH, RF.halo, (1e-7, 0.0), (0.05, 0.02), 1e-7, "train/eval disparity", "recalibrate"),
    (BATCH, RF.halo, (1e-7, 0.0), (1e-4, 0.0), 1e-7, "seamless", "fixed normalization statistics"),
    (NONE, RF.halo, (0.0, 0.0), (0.0, 0.0), 0.0, "seamless", "no normalization layers"),
])
def test_each_verdict_follows_from_its_indicators(audit, halo, tm, ted, max_abs, verdict, says):
    advice = recommend(audit, RF, halo, _mismatch(*tm), _disparity(*ted), SEAMS, _exactness(max_abs), SUGGESTION)
    assert advice.verdict == verdict
    assert says in advice.message + " ".join(advice.actions)


def test_a_batchrenorm_model_is_never_told_to_convert_to_batchrenorm():
    batch = recommend(BATCH, RF, RF.halo, _mismatch(1e-7, 0.0), _disparity(0.05, 0.02), SEAMS, _exactness(1e-7),
                      SUGGESTION)
    renorm = recommend(RENORM, RF, RF.halo, _mismatch(1e-7, 0.0), _disparity(0.05, 0.02), SEAMS, _exactness(1e-7),
                       SUGGESTION)
    assert batch.verdict == renorm.verdict == "train/eval disparity"
    assert any("convert to BatchRenorm" in action for action in batch.actions)
    assert not any("convert" in action for action in renorm.actions)
    assert any("already uses BatchRenorm" in action for action in renorm.actions)


def test_a_small_halo_that_is_still_exact_is_not_called_too_small():
    advice = recommend(BATCH, RF, (8, 8), _mismatch(1e-7, 0.0), _disparity(0.0, 0.0), SEAMS, _exactness(0.0),
                       SUGGESTION)
    assert advice.verdict == "seamless"
