"""The study's claims about transfer to a new dataset (fine-tuning, recalibration, conversion), judged like the
in-distribution ones (:func:`~seamfree.study.claims.judge_groups`): one group per other norm and number k of target
images, seed-level paired intervals on the target's test images, the protocol's rules."""

from __future__ import annotations

from collections.abc import Sequence

from seamfree.layers.registry import display_order, norm_spec
from seamfree.study.claims import Claim, Group, judge_groups
from seamfree.study.values import Row, done

__all__ = ["TRANSFER_CLAIMS"]


def _ks(rows: Sequence[Row]) -> list[int | None]:
    return sorted({r.get("images") for r in rows}, key=lambda k: -1 if k is None else k)


def _at(rows: Sequence[Row], k: int | None) -> list[Row]:
    return [r for r in rows if r.get("images") == k]


def _k_label(k: int | None) -> str:
    return "" if k is None else f"k={k}"


def _best_transfer(rows: list[Row]) -> tuple[str, str]:
    tuned = done(rows, ("dice",), kind="finetune")
    brn = [r for r in tuned if r["norm"] == "batchrenorm"]
    if not brn:
        return "not measured", "no BatchRenorm fine-tuning run"
    groups = [Group(f"− {norm_spec(other).label} {_k_label(k)}", _at(brn, k),
                    [r for r in tuned if r["norm"] == other])
              for other in sorted({r["norm"] for r in tuned} - {"batchrenorm"}, key=display_order)
              for k in _ks(brn)]
    return judge_groups("transfer", groups, "paired Dice of fine-tuned BatchRenorm − each other fine-tuned norm on "
                                            "the target test images, per number k of target images")


def _recalibration(rows: list[Row]) -> tuple[str, str]:
    """Judged on every recalibration arm present: with patches placed by the labels and without labels."""
    zero = done(rows, ("dice",), kind="zero-shot", norm="batch")
    groups = []
    for kind, how in (("recalibrate-label-free", "without labels"), ("recalibrate", "patches placed with labels")):
        recalibrated = done(rows, ("dice",), kind=kind, norm="batch")
        groups += [Group(f"{how} {_k_label(k)}", _at(recalibrated, k), zero) for k in _ks(recalibrated)]
    if not groups or not zero:
        return "not measured", "no recalibrated and zero-shot BatchNorm runs to pair"
    return judge_groups("recalibration", groups, "paired Dice of BatchNorm recalibrated on k target images − "
                                                 "zero-shot, on the target test images")


def _conversion(rows: list[Row]) -> tuple[str, str]:
    converted = done(rows, ("dice",), kind="convert")
    tuned = done(rows, ("dice",), kind="finetune", norm="batch")
    if not converted or not tuned:
        return "not measured", "no conversion run paired with a BatchNorm fine-tuning run"
    groups = [Group(_k_label(k), _at(converted, k), tuned) for k in _ks(converted)]
    return judge_groups("conversion", groups, "paired Dice of BatchNorm converted to BatchRenorm, then fine-tuned "
                                              "− fine-tuned as BatchNorm")


TRANSFER_CLAIMS = (
    Claim("BatchRenorm transfers best to a new dataset", _best_transfer),
    Claim("Recalibrating BatchNorm statistics on target images is a cheap fix for a domain shift", _recalibration),
    Claim("A trained BatchNorm model can be converted to BatchRenorm and fine-tuned", _conversion),
)
