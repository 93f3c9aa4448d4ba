"""The plain-language verdict of a diagnosis and what to do about it.

Thresholds (documented in docs/diagnose.md): tile mismatch counts as floating-point noise below
``TM_ABS_NOISE`` (mean |ΔP| between overlapping tiles) and ``TM_DICE_NOISE``; train/eval disparity matters
above ``TED_DICE_MATTERS`` (1 − Dice between train-mode and eval predictions) or ``TED_ABS_MATTERS``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from seamfree.diagnostics.disparity import TrainEvalDisparity
from seamfree.diagnostics.exactness import ExactnessCheck
from seamfree.diagnostics.mismatch import TileMismatch
from seamfree.diagnostics.seams import SeamScore
from seamfree.layers.audit import NormAudit
from seamfree.models.describe import ModelInfo
from seamfree.models.receptive import ReceptiveField
from seamfree.tiling.suggest import TilingSuggestion

__all__ = ["Recommendation", "recommend"]

TM_ABS_NOISE = 1e-4
TM_DICE_NOISE = 1e-3
TED_DICE_MATTERS = 0.01
TED_ABS_MATTERS = 0.01

Verdict = Literal["seamless", "tiling artifacts", "train/eval disparity", "halo too small"]


@dataclass(frozen=True)
class Recommendation:
    """Verdict, one-paragraph explanation, and concrete actions (commands or calls)."""

    verdict: Verdict
    message: str
    actions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "message": self.message, "actions": list(self.actions)}


def _layer_phrase(audit: NormAudit) -> str:
    types = Counter(layer.type for layer in audit.tile_dependent_layers)
    parts = [f"{n} {kind}" for kind, n in types.most_common()]
    return ", ".join(parts) + (" layer" if sum(types.values()) == 1 else " layers")


def _second_remedy(audit: NormAudit) -> str:
    """For a train/eval disparity: BatchRenorm for a BatchNorm model; more training for a BatchRenorm one (its
    running statistics are what it already normalizes with: they converge as training goes on)."""
    if any("renorm" in layer.type.lower() for layer in audit.layers):
        return ("or fine-tune further: the model already uses BatchRenorm, whose running statistics settle with "
                "more steps on your data (seamfree train with model.checkpoint: MODEL)")
    return ("or convert to BatchRenorm and fine-tune: seamfree convert MODEL --out CONVERTED.pt, then seamfree "
            "train with model.checkpoint: CONVERTED.pt")


def recommend(audit: NormAudit, rf: ReceptiveField, halo: tuple[int, ...], mismatch: TileMismatch,
              disparity: TrainEvalDisparity, seams: SeamScore, exactness: ExactnessCheck,
              suggestion: TilingSuggestion, model: ModelInfo | None = None) -> Recommendation:
    """Return the recommendation that follows from the measured indicators (``model``: the description whose
    tile probe may contradict the static audit)."""
    tiling = (f"seamfree predict --core {','.join(map(str, suggestion.core))} "
              f"--halo {','.join(map(str, suggestion.halo))}")
    tm_noise = mismatch.tm_abs <= TM_ABS_NOISE and mismatch.tm_dice <= TM_DICE_NOISE
    seam_text = f"; {seams.summary}" if seams.score is not None else ""
    probed = model is not None and model.tile_dependent
    if not tm_noise or audit.verdict == "tile-dependent" or probed:
        if audit.tile_dependent_layers:
            cause = f"{_layer_phrase(audit)} use per-tile statistics"
        elif probed and model is not None:
            cause = f"the prediction depends on the tile, decided by {model.evidence}"
        else:
            cause = "the prediction depends on the tile although no layer was recognized as the cause"
        return Recommendation(
            "tiling artifacts",
            f"{cause}: expect tiling artifacts (TM_dice {mismatch.tm_dice:.3g}, TM_abs {mismatch.tm_abs:.2g}"
            f"{seam_text}). No halo removes them; blending only hides them.",
            ("retrain or fine-tune with BatchRenorm: seamfree train CONFIG with model.norm: batchrenorm",
             "meanwhile, use the largest tiles memory allows (TM shrinks as tiles grow)"),
        )
    if any(h < r for h, r in zip(halo, rf.halo)) and not exactness.exact:
        return Recommendation(
            "halo too small",
            f"the halo {halo} is smaller than the {rf.halo} this model's receptive field (radius {rf.radius}) "
            "needs: tiles miss context and "
            f"differ from whole-image prediction by up to {exactness.max_abs:.2g}.",
            (f"use halo >= {rf.halo}: {tiling}",),
        )
    if disparity.ted_dice > TED_DICE_MATTERS or disparity.ted_abs > TED_ABS_MATTERS:
        kinds = sorted({layer.type for layer in audit.layers if layer.statistics == "running"})
        delta = f", ΔDice {disparity.delta_dice:+.3f}" if disparity.delta_dice is not None else ""
        return Recommendation(
            "train/eval disparity",
            f"{'/'.join(kinds) or 'normalization'} with running statistics: tiling is exact (TM_abs "
            f"{mismatch.tm_abs:.1g}), but predictions with training batches differ from eval mode (TED_dice "
            f"{disparity.ted_dice:.3g}, TED_abs {disparity.ted_abs:.2g}{delta}): the running statistics do not match "
            "the data.",
            ("recalibrate the running statistics on your images: seamfree recalibrate MODEL IMAGES --out FIXED.pt",
             _second_remedy(audit), f"tile with {tiling}"),
        )
    why = "no normalization layers" if audit.verdict == "no-normalization" else "fixed normalization statistics"
    exact = (f"tiled = whole-image up to {exactness.max_abs:.1g}" if exactness.exact
             else f"tiled differs from whole-image by up to {exactness.max_abs:.2g}")
    return Recommendation(
        "seamless",
        f"{why}, halo {halo} >= the {rf.halo} the receptive field needs, TM_abs {mismatch.tm_abs:.1g}, "
        f"TED_dice {disparity.ted_dice:.2g}{seam_text}; {exact}.",
        (f"predict with {tiling} ({suggestion.tiles_per_batch} tile(s) per batch)",),
    )
