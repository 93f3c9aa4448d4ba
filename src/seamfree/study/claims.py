"""The study's claims (PAPER.md), each checked against the rows of a study table.

Every check returns a verdict ("reproduced", "partly", "not reproduced", "inconclusive", "not measured") and the
numbers it rests on, so that results.md states plainly which claims hold on this data and which do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from seamfree.layers.registry import display_order, norm_spec, norms_where
from seamfree.study.statistics import Estimate, bootstrap_ci, compare, paired_difference

__all__ = ["CLAIMS", "UNTRAINED_DICE", "Claim", "ClaimCheck", "check_claims", "paired_values", "per_image_values",
           "usable_rows"]

# From the norm registry: norms whose statistics come from the tile (tiling artifacts expected); norms that
# compute their statistics at inference at all, per tile or per voxel (no train/eval disparity possible); and
# norms with fixed statistics (tiling can be exact).
TILE_WISE = norms_where(tile_dependent=True)
COMPUTED = norms_where(computes_statistics=True)
FIXED = norms_where(computes_statistics=False)
# TM_abs above this is a tiling artifact (the diagnosis threshold); below EXACT it is floating-point noise.
ARTIFACT = 1e-4
EXACT = 1e-5
# BatchRenorm "keeps accuracy" when the interval of its Dice minus the best norm's (same dataset and batch size)
# lies above minus this.
ACCURACY_MARGIN = 0.03
# BatchRenorm "removes" the train/eval disparity where the upper end of its TED_dice interval lies below this.
REMOVED_TED = 0.02
# A model whose test Dice is below this did not learn the task: left out of the claims (and listed).
UNTRAINED_DICE = 0.05

Row = dict[str, Any]


@dataclass(frozen=True)
class ClaimCheck:
    """The verdict on one claim and the evidence, in words with numbers."""

    claim: str
    verdict: str
    evidence: str


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and the function that checks it on study rows."""

    text: str
    check: Callable[[list[Row]], tuple[str, str]]


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _done(rows: Sequence[Row], measured: tuple[str, ...] = (), **where: Any) -> list[Row]:
    """The finished rows matching ``where`` in which every ``measured`` quantity is known: a row that lacks one
    is left out of the claim (it neither passes nor fails it), never counted as a 0."""
    selected = []
    for row in rows:
        if row.get("status") != "done" or not all(_known(row.get(k)) for k in measured):
            continue
        if all((row.get(k) in v) if isinstance(v, tuple) else row.get(k) == v for k, v in where.items()):
            selected.append(row)
    return selected


def _in_distribution(rows: Sequence[Row], kinds: tuple[str, ...] = ("grid", "volume"),
                     measured: tuple[str, ...] = ()) -> list[Row]:
    return [r for r in _done(rows, measured, stage="in-distribution") if r["kind"] in kinds]


def _share(count: int, total: int) -> str:
    if total == 0:
        return "not measured"
    if count == total:
        return "reproduced"
    return "partly" if count >= total / 2 else "not reproduced"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _tile_wise_artifacts(rows: list[Row]) -> tuple[str, str]:
    selected = [r for r in _in_distribution(rows, measured=("tm_abs",)) if r["norm"] in TILE_WISE]
    hits = [r for r in selected if r["tm_abs"] > ARTIFACT]
    values = [r["tm_dice"] for r in selected if r["tm_dice"] is not None]
    return _share(len(hits), len(selected)), (
        f"{len(hits)} of {len(selected)} tile-wise CNN models have TM_abs > {ARTIFACT:g}; TM_dice "
        f"{_fmt(min(values, default=None))}–{_fmt(max(values, default=None))}")


def _global_exact(rows: list[Row]) -> tuple[str, str]:
    selected = [r for r in _in_distribution(rows, measured=("tm_abs", "exact_max_abs")) if r["norm"] in FIXED]
    hits = [r for r in selected if r["tm_abs"] < EXACT and r["exact_max_abs"] < 1e-3]
    worst = max((r["tm_abs"] for r in selected), default=None)
    return _share(len(hits), len(selected)), (
        f"{len(hits)} of {len(selected)} CNN models with global statistics "
        f"({', '.join(norm_spec(n).label for n in FIXED)}) have TM_abs < {EXACT:g} (largest {_fmt(worst)})")


def _tile_wise_no_disparity(rows: list[Row]) -> tuple[str, str]:
    selected = [r for r in _in_distribution(rows, ("grid", "volume", "vit"), ("ted_abs",)) if r["norm"] in COMPUTED]
    hits = [r for r in selected if r["ted_abs"] <= 1e-6]
    return _share(len(hits), len(selected)), f"{len(hits)} of {len(selected)} tile-wise models have TED_abs ≤ 1e-6"


def _decide(outcomes: Sequence[str]) -> str:
    """One verdict from the outcome of each (dataset, batch size) group — "holds", "fails", "partly" (a weaker form
    holds) or "inconclusive" (the interval does not decide): reproduced when it holds in every group, not
    reproduced when it fails somewhere and holds nowhere, inconclusive when no group decides, partly otherwise."""
    kinds = set(outcomes)
    if not kinds:
        return "not measured"
    if kinds == {"holds"}:
        return "reproduced"
    if kinds <= {"inconclusive"}:
        return "inconclusive"
    if "fails" in kinds and not kinds & {"holds", "partly"}:
        return "not reproduced"
    return "partly"


def _outcome(difference: Estimate) -> str:
    return {"higher": "holds", "lower": "fails"}.get(compare(difference), "inconclusive")


def _grid_groups(rows: Sequence[Row], norm: str, key: str) -> dict[tuple[str, int], list[Row]]:
    """The grid rows of ``norm`` with ``key`` measured, by (dataset, training batch size); every seed in a group."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in _done(rows, (key,), kind="grid", norm=norm):
        groups.setdefault((row["dataset"], row["batch_size"]), []).append(row)
    return dict(sorted(groups.items()))


def _batchnorm_disparity(rows: list[Row]) -> tuple[str, str]:
    """TED_dice at the smallest training batch − at the largest, paired by dataset, seed and test image."""
    measured = _done(rows, ("ted_dice",), kind="grid", norm="batch")
    parts, outcomes = [], []
    for dataset in sorted({r["dataset"] for r in measured}):
        sizes = sorted({r["batch_size"] for r in measured if r["dataset"] == dataset})
        if len(sizes) < 2:
            continue
        # the two batch sizes are paired with each other: their own batch size is left out of the matching
        small, large = ([{**r, "batch_size": None} for r in measured if r["dataset"] == dataset
                         and r["batch_size"] == size] for size in (sizes[0], sizes[-1]))
        a, b = paired_values(small, large, "ted_dice")
        if not a:
            continue
        difference = paired_difference(a, b)
        outcomes.append(_outcome(difference))
        parts.append(f"{dataset}: b{sizes[0]} {bootstrap_ci(a).mean:.3f} − b{sizes[-1]} {bootstrap_ci(b).mean:.3f} "
                     f"= {difference}")
    if not outcomes:
        return "not measured", "no dataset with BatchNorm models at two training batch sizes"
    return _decide(outcomes), ("BatchNorm TED_dice at the smallest − at the largest training batch, paired by "
                               "seed and test image (reproduced when the interval lies above 0 on every "
                               "dataset): " + "; ".join(parts))


def _batchnorm_accuracy(rows: list[Row]) -> tuple[str, str]:
    """The paper's eval-mode drop, where the evidence puts it: ΔDice = Dice(train-mode) − Dice(eval) > 0 means
    eval mode (running statistics) loses accuracy. It is judged under domain shift (source models on the target
    dataset, zero-shot), where the running statistics are another dataset's, and reported in distribution too,
    where they are the training data's and ΔDice has stayed negative under every sampling protocol tried."""
    inside = _done(rows, ("delta_dice",), kind="grid", norm="batch", stage="in-distribution")
    shifted = _done(rows, ("delta_dice",), kind="zero-shot", norm="batch")
    if not inside and not shifted:
        return "not measured", "no BatchNorm model with ΔDice"
    parts = []
    for label, selected in (("under domain shift (zero-shot)", shifted), ("in distribution", inside)):
        if selected:
            values = ", ".join(f"{r['dataset']} b{r['batch_size']} s{r['seed']}: {_fmt(r['delta_dice'])}"
                               for r in selected)
            parts.append(f"{label}, {len(selected)} models, per image and seed: "
                         f"{bootstrap_ci(per_image_values(selected, 'delta_dice'))} ({values})")
        else:
            parts.append(f"{label}: not measured")
    verdict = "not measured" if not shifted else {"higher": "reproduced", "lower": "not reproduced"}.get(
        compare(bootstrap_ci(per_image_values(shifted, "delta_dice"))), "inconclusive")
    return verdict, "ΔDice = Dice(train-mode) − Dice(eval) of BatchNorm models " + "; ".join(parts)


def _renorm_no_disparity(rows: list[Row]) -> tuple[str, str]:
    """Per dataset and batch size: removed when BatchRenorm's TED_dice interval lies below :data:`REMOVED_TED`,
    reduced ("partly") when only its paired difference to BatchNorm lies below 0."""
    parts, outcomes = [], []
    for (dataset, batch), renorm in _grid_groups(rows, "batchrenorm", "ted_dice").items():
        level = bootstrap_ci(per_image_values(renorm, "ted_dice"))
        batchnorm = _done(rows, ("ted_dice",), kind="grid", norm="batch", dataset=dataset, batch_size=batch)
        a, b = paired_values(renorm, batchnorm, "ted_dice")
        difference = paired_difference(a, b) if a else None
        if level.count >= 3 and level.high <= REMOVED_TED:
            outcome = "holds"
        elif difference is not None and compare(difference) == "lower":
            outcome = "partly"
        elif difference is not None and compare(difference) == "higher":
            outcome = "fails"
        else:
            outcome = "inconclusive"
        outcomes.append(outcome)
        versus = f", − BatchNorm {difference}" if difference is not None else ""
        parts.append(f"{dataset} b{batch}: {level}{versus}")
    return _decide(outcomes), (
        f"BatchRenorm TED_dice over seeds and test images, and its paired difference to BatchNorm (removed when "
        f"the interval lies below {REMOVED_TED}, reduced when only the difference lies below 0): "
        + ("; ".join(parts) or "no BatchRenorm model with TED"))


def _renorm_accuracy(rows: list[Row]) -> tuple[str, str]:
    """Non-inferiority per dataset and batch size: BatchRenorm − the best other norm (by mean Dice), paired."""
    parts, outcomes = [], []
    for (dataset, batch), renorm in _grid_groups(rows, "batchrenorm", "dice").items():
        peers = [r for r in _done(rows, ("dice",), kind="grid", dataset=dataset, batch_size=batch)
                 if r["norm"] != "batchrenorm"]
        by_norm: dict[str, list[Row]] = {}
        for row in peers:
            by_norm.setdefault(row["norm"], []).append(row)
        if not by_norm:
            continue
        best = max(sorted(by_norm, key=display_order),
                   key=lambda n: sum(r["dice"] for r in by_norm[n]) / len(by_norm[n]))
        a, b = paired_values(renorm, by_norm[best], "dice")
        if not a:
            continue
        difference = paired_difference(a, b)
        outcomes.append("holds" if difference.count >= 3 and difference.low > -ACCURACY_MARGIN else
                        "fails" if difference.count >= 3 and difference.high < -ACCURACY_MARGIN else "inconclusive")
        parts.append(f"{dataset} b{batch}: − {norm_spec(best).label} {difference}")
    return _decide(outcomes), (
        f"paired Dice of BatchRenorm − the best other norm of the same dataset and batch size, over seeds and test "
        f"images (kept when the interval lies above −{ACCURACY_MARGIN}, lost when below): "
        + ("; ".join(parts) or "no BatchRenorm model with a peer"))


def _artifacts_grow(rows: list[Row]) -> tuple[str, str]:
    selected = [r for r in _in_distribution(rows, measured=("tm_abs", "tm_abs_small")) if r["norm"] in TILE_WISE]
    hits = [r for r in selected if r["tm_abs_small"] > r["tm_abs"]]
    drops = [r["dice"] - r["dice_small"] for r in selected if _known(r.get("dice")) and _known(r.get("dice_small"))]
    return _share(len(hits), len(selected)), (
        f"TM_abs with small tiles exceeds TM_abs with the study's tiles in {len(hits)} of {len(selected)} tile-wise "
        f"models; Dice drop with small tiles {_fmt(min(drops, default=None))}–{_fmt(max(drops, default=None))}")


def _by_k(a_rows: Sequence[Row], b_rows: Sequence[Row], key: str = "dice") -> list[tuple[int | None, Estimate]]:
    """The paired difference ``a − b`` of ``key`` for each number k of target images the ``a`` rows were adapted
    with (a ``b`` row without k, zero-shot, pairs with every k; ``a`` rows without k form one group, k None)."""
    differences = []
    for k in sorted({r.get("images") for r in a_rows}, key=lambda k: -1 if k is None else k):
        a, b = paired_values([r for r in a_rows if r.get("images") == k], b_rows, key)
        if a:
            differences.append((k, paired_difference(a, b)))
    return differences


def _across_k(outcomes: Sequence[str]) -> str:
    """One verdict from per-k comparisons: reproduced when higher at every k, not reproduced when lower at any."""
    if "lower" in outcomes:
        return "not reproduced"
    return "reproduced" if outcomes and set(outcomes) == {"higher"} else "inconclusive"


def _per_k_text(differences: Sequence[tuple[int | None, Estimate]]) -> str:
    return ", ".join(str(d) if k is None else f"k={k}: {d}" for k, d in differences)


def _best_transfer(rows: list[Row]) -> tuple[str, str]:
    tuned = _done(rows, ("dice",), kind="finetune")
    brn = [r for r in tuned if r["norm"] == "batchrenorm"]
    if not brn:
        return "not measured", "no BatchRenorm fine-tuning run"
    parts, outcomes = [], []
    for other in sorted({r["norm"] for r in tuned} - {"batchrenorm"}, key=display_order):
        differences = _by_k(brn, [r for r in tuned if r["norm"] == other])
        if differences:
            outcomes += [compare(d) for _, d in differences]
            parts.append(f"BatchRenorm − {norm_spec(other).label}: {_per_k_text(differences)}")
    if not outcomes:
        return "not measured", "no fine-tuned model to pair with BatchRenorm (same data, seed and k)"
    return _across_k(outcomes), ("paired Dice differences on the target test images after fine-tuning on k target "
                                 "images (reproduced when higher against every norm at every k): " + "; ".join(parts))


def _recalibration(rows: list[Row]) -> tuple[str, str]:
    recalibrated = _done(rows, ("dice",), kind="recalibrate", norm="batch")
    zero = _done(rows, ("dice",), kind="zero-shot", norm="batch")
    if not recalibrated or not zero:
        return "not measured", "no recalibrated and zero-shot BatchNorm runs to pair"
    differences = _by_k(recalibrated, zero)
    if not differences:
        return "not measured", "no zero-shot BatchNorm run to pair with the recalibrated one"
    return _across_k([compare(d) for _, d in differences]), (
        f"BatchNorm recalibrated on k target images − zero-shot, paired Dice on the target test images: "
        f"{_per_k_text(differences)}; zero-shot {bootstrap_ci(per_image_values(zero, 'dice'))}")


def _conversion(rows: list[Row]) -> tuple[str, str]:
    converted = _done(rows, ("dice",), kind="convert")
    tuned = _done(rows, ("dice",), kind="finetune", norm="batch")
    differences = _by_k(converted, tuned) if converted and tuned else []
    if not differences:
        return "not measured", "no conversion run paired with a BatchNorm fine-tuning run"
    # the claim: conversion works, i.e. it costs no more than ACCURACY_MARGIN of Dice against staying BatchNorm
    outcomes = ["higher" if d.count >= 3 and d.low > -ACCURACY_MARGIN else
                "lower" if d.count >= 3 and d.high < -ACCURACY_MARGIN else "inconclusive" for _, d in differences]
    return _across_k(outcomes), (
        f"converted to BatchRenorm then fine-tuned − fine-tuned as BatchNorm, paired Dice: "
        f"{_per_k_text(differences)} (reproduced when every interval lies above −{ACCURACY_MARGIN})")


def per_image_values(rows: Sequence[Row], key: str) -> list[float]:
    """``key`` image by image (the ``<key>_images`` column) where recorded, else the row's mean, for every row."""
    values: list[float] = []
    for row in rows:
        per_image = [v for v in row.get(f"{key}_images") or [] if _known(v)]
        values.extend(per_image or [row[key]])
    return values


def paired_values(a_rows: Sequence[Row], b_rows: Sequence[Row], key: str) -> tuple[list[float], list[float]]:
    """Values of ``key`` matched one to one: rows of the same dataset, test set and seed (and batch size and
    number of adaptation images k where both have one), then image by image where both recorded the same number
    of images, else their means."""
    a_values: list[float] = []
    b_values: list[float] = []
    for a in a_rows:
        match = [b for b in b_rows if b.get("dataset") == a.get("dataset") and b.get("seed") == a.get("seed")
                 and b.get("test") == a.get("test")
                 and (a.get("batch_size") is None or b.get("batch_size") in (None, a.get("batch_size")))
                 # the same k target images; a zero-shot row (no k) pairs with every k
                 and (a.get("images") is None or b.get("images") in (None, a.get("images")))]
        if not match:
            continue
        b = match[0]
        x, y = a.get(f"{key}_images") or [], b.get(f"{key}_images") or []
        pairs = [(u, v) for u, v in zip(x, y) if _known(u) and _known(v)] if x and len(x) == len(y) else []
        pairs = pairs or [(a[key], b[key])]
        a_values.extend(u for u, _ in pairs)
        b_values.extend(v for _, v in pairs)
    return a_values, b_values


def _architecture(kind: str, label: str) -> Callable[[list[Row]], tuple[str, str]]:
    def check(rows: list[Row]) -> tuple[str, str]:
        selected = _done(rows, kind=kind)
        if not selected:
            return "not measured", f"no {label} runs"
        by_norm = {r["norm"]: r for r in selected}
        parts, hits, total = [], 0, 0
        for norm, row in sorted(by_norm.items()):
            parts.append(f"{norm}: TM_abs {_fmt(row['tm_abs'])}, TED_dice {_fmt(row['ted_dice'])}, Dice "
                         f"{_fmt(row['dice'])}")
        def has(norm: str, key: str) -> bool:
            return norm in by_norm and _known(by_norm[norm].get(key))

        if has("batch", "ted_dice") and has("batchrenorm", "ted_dice"):
            total += 1
            hits += by_norm["batchrenorm"]["ted_dice"] <= by_norm["batch"]["ted_dice"]
        for norm in COMPUTED:  # with attention (ViT), per-voxel norms are tile-dependent too
            if has(norm, "tm_abs"):
                total += 1
                hits += by_norm[norm]["tm_abs"] > ARTIFACT
        if kind == "volume":
            for norm in ("batch", "batchrenorm"):
                if has(norm, "tm_abs"):
                    total += 1
                    hits += by_norm[norm]["tm_abs"] < EXACT
        return _share(hits, total), "; ".join(parts)
    return check


CLAIMS: tuple[Claim, ...] = (
    Claim("Tile-wise norms (InstanceNorm, GroupNorm, LayerNorm) cause tiling artifacts", _tile_wise_artifacts),
    Claim("Global statistics (BatchNorm, BatchRenorm in eval mode) make tiled prediction exact", _global_exact),
    Claim("Tile-wise norms have no train/eval disparity", _tile_wise_no_disparity),
    Claim("BatchNorm has a train/eval disparity that grows as the training batch shrinks", _batchnorm_disparity),
    Claim("BatchNorm's accuracy drops in eval mode (judged under domain shift)", _batchnorm_accuracy),
    Claim("BatchRenorm removes the train/eval disparity, even with small batches", _renorm_no_disparity),
    Claim("BatchRenorm keeps the accuracy", _renorm_accuracy),
    Claim("Tiling artifacts grow as tiles shrink", _artifacts_grow),
    Claim("BatchRenorm transfers best to a new dataset", _best_transfer),
    Claim("Recalibrating BatchNorm statistics on target images is a cheap fix for a domain shift", _recalibration),
    Claim("A trained BatchNorm model can be converted to BatchRenorm and fine-tuned", _conversion),
    Claim("The pattern holds for ViT-based models", _architecture("vit", "ViT")),
    Claim("The pattern holds in 3D (anisotropic EM stack)", _architecture("volume", "3D")),
)


def usable_rows(rows: Sequence[Row]) -> tuple[list[Row], list[str]]:
    """The rows the claims rest on, and why the others were left out.

    - A model that did not train (test Dice below :data:`UNTRAINED_DICE`) says nothing about its norm.
    - Tracked InstanceNorm trained at batch size 1 is the same computation as BatchNorm at batch size 1 (one
      sample: its instance statistics are the batch statistics, and both track running averages): counted once,
      as BatchNorm, where both exist.
    """
    kept, left_out = [], []
    batch_one = {(r.get("dataset"), r.get("seed"), r.get("kind")) for r in rows
                 if r.get("norm") == "batch" and r.get("batch_size") == 1 and r.get("status") == "done"}
    for row in rows:
        name = row.get("name", f"{row.get('norm')} {row.get('dataset')}")
        dice = row.get("dice")
        if row.get("status") == "done" and row.get("kind") in ("grid", "volume", "vit") and dice is not None \
                and _known(dice) and dice < UNTRAINED_DICE:
            left_out.append(f"{name} (did not train: Dice {dice:.3g})")
        elif row.get("norm") == "instance_tracked" and row.get("batch_size") == 1 and \
                (row.get("dataset"), row.get("seed"), row.get("kind")) in batch_one:
            left_out.append(f"{name} (the same computation as BatchNorm at batch size 1)")
        else:
            kept.append(row)
    return kept, left_out


def check_claims(rows: Sequence[Row]) -> list[ClaimCheck]:
    """Return the verdict and evidence of every claim in :data:`CLAIMS` on the study's usable rows
    (:func:`usable_rows`); the last check lists the rows left out, if any."""
    kept, left_out = usable_rows(rows)
    checks = []
    for claim in CLAIMS:
        verdict, evidence = claim.check(list(kept))
        checks.append(ClaimCheck(claim.text, verdict, evidence))
    if left_out:
        checks.append(ClaimCheck("Runs left out of every claim", "not counted", "; ".join(left_out)))
    return checks

