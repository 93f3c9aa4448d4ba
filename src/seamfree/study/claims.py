"""The study's claims (PAPER.md), each checked against the rows of a study table under the pre-registered
protocol (``protocol.md``: endpoints, sides and bounds, Bonferroni-corrected seed-level intervals, symmetric rules).

Every check returns a verdict ("reproduced", "partly", "not reproduced", "inconclusive", "not measured") and the
numbers it rests on, so that results.md states plainly which claims hold on this data and which do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from seamfree.layers.registry import display_order, norm_spec, norms_where
from seamfree.study.protocol import count_verdict, decide, group_outcome, protocol, summary
from seamfree.study.statistics import bootstrap_ci, paired_difference
from seamfree.study.values import Row, done, grid_groups, known, paired_estimate, paired_values, row_mean, unit_values

__all__ = ["CLAIMS", "Claim", "ClaimCheck", "Group", "check_claims", "judge_groups", "untrained_dice",
           "usable_rows"]

# From the norm registry: norms whose statistics come from the tile (tiling artifacts expected); norms that
# compute their statistics at inference at all, per tile or per voxel (no train/eval disparity possible); and
# norms with fixed statistics (tiling can be exact).
TILE_WISE = norms_where(tile_dependent=True)
COMPUTED = norms_where(computes_statistics=True)
FIXED = norms_where(computes_statistics=False)


def _threshold(name: str) -> float:
    return protocol().thresholds[name]


def untrained_dice() -> float:
    """Below this test Dice a model did not learn the task (the protocol's ``untrained_dice``)."""
    return _threshold("untrained_dice")


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


@dataclass(frozen=True)
class Group:
    """One group of a claim: ``key`` of ``rows`` (or its paired difference ``rows − versus``), named ``label``."""

    label: str
    rows: list[Row]
    versus: list[Row] | None = None
    key: str = "dice"
    note: str = ""
    extra: list[str] = field(default_factory=list)


def judge_groups(rule_name: str, groups: Sequence[Group], what: str) -> tuple[str, str]:
    """The verdict of a claim judged group by group under the protocol's rule ``rule_name``, and its evidence:
    every group's seed-level interval at the Bonferroni-corrected level, its outcome, and the counts."""
    rule = protocol().rule(rule_name)
    level = protocol().group_level(len(groups))
    outcomes, parts = [], []
    resamples = protocol().bootstrap_resamples
    for group in groups:
        if group.versus is None:
            values, units = unit_values(group.rows, group.key)
            value = bootstrap_ci(values, units=units, level=level, resamples=resamples)
        else:
            a, b, units = paired_values(group.rows, group.versus, group.key)
            if not a:
                continue
            value = paired_difference(a, b, units=units, level=level, resamples=resamples)
        outcome = group_outcome(value, rule)
        outcomes.append(outcome)
        parts.append(f"{group.label}: {group.note}{value} → {outcome}" + "".join(group.extra))
    if not outcomes:
        return "not measured", f"{what}: no group to judge"
    return decide(outcomes), (f"{what}, {rule.words()} claimed; seed-level intervals at {level * 100:g} % "
                              f"({protocol().correction} over {len(groups)} groups): " + "; ".join(parts)
                              + f" ({summary(outcomes)})")


def _in_distribution(rows: Sequence[Row], kinds: tuple[str, ...] = ("grid", "volume"),
                     measured: tuple[str, ...] = ()) -> list[Row]:
    return [r for r in done(rows, measured, stage="in-distribution") if r["kind"] in kinds]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _fmt3(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _tile_wise_artifacts(rows: list[Row]) -> tuple[str, str]:
    bound = _threshold("artifact_tm_abs")
    selected = [r for r in _in_distribution(rows, measured=("tm_abs",)) if r["norm"] in TILE_WISE]
    hits = [r for r in selected if r["tm_abs"] > bound]
    values = [r["tm_dice"] for r in selected if r["tm_dice"] is not None]
    return count_verdict(len(hits), len(selected)), (
        f"{len(hits)} of {len(selected)} tile-wise CNN models have TM_abs > {bound:g}"
        + (f"; TM_dice {_fmt(min(values))}–{_fmt(max(values))}" if values else ""))


def _global_exact(rows: list[Row]) -> tuple[str, str]:
    tm, whole = _threshold("exact_tm_abs"), _threshold("exact_max_abs")
    selected = [r for r in _in_distribution(rows, measured=("tm_abs", "exact_max_abs")) if r["norm"] in FIXED]
    hits = [r for r in selected if r["tm_abs"] < tm and r["exact_max_abs"] < whole]
    worst = max((r["tm_abs"] for r in selected), default=None)
    return count_verdict(len(hits), len(selected)), (
        f"{len(hits)} of {len(selected)} CNN models with global statistics "
        f"({', '.join(norm_spec(n).label for n in FIXED)}) have TM_abs < {tm:g} and tiled − whole < {whole:g} "
        f"(largest TM_abs {_fmt(worst)})")


def _tile_wise_no_disparity(rows: list[Row]) -> tuple[str, str]:
    bound = _threshold("no_disparity_ted_abs")
    selected = [r for r in _in_distribution(rows, ("grid", "volume", "vit"), ("ted_abs",)) if r["norm"] in COMPUTED]
    hits = [r for r in selected if r["ted_abs"] <= bound]
    return count_verdict(len(hits), len(selected)), \
        f"{len(hits)} of {len(selected)} tile-wise models have TED_abs ≤ {bound:g}"


def _batchnorm_disparity(rows: list[Row]) -> tuple[str, str]:
    """TED_dice at the smallest training batch − at the largest, per dataset, paired by seed and test image."""
    measured = done(rows, ("ted_dice",), kind="grid", norm="batch")
    groups = []
    for dataset in sorted({r["dataset"] for r in measured}):
        sizes = sorted({r["batch_size"] for r in measured if r["dataset"] == dataset})
        if len(sizes) < 2:
            continue
        # the two batch sizes are paired with each other: their own batch size is left out of the matching
        small, large = ([{**r, "batch_size": None} for r in measured if r["dataset"] == dataset
                         and r["batch_size"] == size] for size in (sizes[0], sizes[-1]))
        means = [_fmt3(row_mean(rows_at, "ted_dice")) for rows_at in (small, large)]
        note = f"b{sizes[0]} {means[0]} − b{sizes[-1]} {means[1]} = "
        groups.append(Group(dataset, small, large, "ted_dice", note))
    if not groups:
        return "not measured", "no dataset with BatchNorm models at two training batch sizes"
    return judge_groups("ted_grows", groups, "BatchNorm TED_dice at the smallest − at the largest training batch")


def _eval_drop(kind: str, where: str) -> Callable[[list[Row]], tuple[str, str]]:
    """The paper's eval-mode drop: ΔDice = Dice(train-mode) − Dice(eval) > 0 means eval mode (running statistics)
    loses accuracy; judged per (dataset, batch size) of ``kind`` rows (zero-shot: under domain shift)."""
    def check(rows: list[Row]) -> tuple[str, str]:
        groups = [Group(f"{dataset} b{batch}", selected, key="delta_dice")
                  for (dataset, batch), selected in grid_groups(rows, "batch", "delta_dice", kind).items()]
        if not groups:
            return "not measured", f"no BatchNorm model with ΔDice {where}"
        return judge_groups("eval_drop", groups, f"ΔDice = Dice(train-mode) − Dice(eval) of BatchNorm {where}")
    return check


def _renorm_no_disparity(rows: list[Row]) -> tuple[str, str]:
    """Per dataset and batch size: BatchRenorm's TED_dice against the bound, with its difference to BatchNorm."""
    groups = []
    for (dataset, batch), renorm in grid_groups(rows, "batchrenorm", "ted_dice").items():
        batchnorm = done(rows, ("ted_dice",), kind="grid", norm="batch", dataset=dataset, batch_size=batch)
        versus = paired_estimate(renorm, batchnorm, "ted_dice")
        clip = [r["clip_rate"] for r in renorm if known(r.get("clip_rate"))]
        extra = [f", − BatchNorm {versus}" if versus is not None else "",
                 f", r/d clipped in {max(clip):.1%} of the statistics at most" if clip else ""]
        groups.append(Group(f"{dataset} b{batch}", renorm, key="ted_dice", extra=extra))
    return judge_groups("renorm_ted", groups, "BatchRenorm TED_dice (its clip rate and difference to BatchNorm "
                                              "beside it: with r and d unclipped, TED is 0 by construction)")


def _best_other(rows: Sequence[Row], dataset: str, batch: int) -> tuple[str, list[Row]] | None:
    by_norm: dict[str, list[Row]] = {}
    for row in done(rows, ("dice",), kind="grid", dataset=dataset, batch_size=batch):
        if row["norm"] != "batchrenorm":
            by_norm.setdefault(row["norm"], []).append(row)
    if not by_norm:
        return None
    best = max(sorted(by_norm, key=display_order), key=lambda n: sum(r["dice"] for r in by_norm[n]) / len(by_norm[n]))
    return best, by_norm[best]


def _renorm_accuracy(rows: list[Row]) -> tuple[str, str]:
    """Non-inferiority per dataset and batch size: BatchRenorm − the best other norm (by mean Dice), paired."""
    groups = []
    for (dataset, batch), renorm in grid_groups(rows, "batchrenorm", "dice").items():
        best = _best_other(rows, dataset, batch)
        if best is not None:
            groups.append(Group(f"{dataset} b{batch} − {norm_spec(best[0]).label}", renorm, best[1]))
    return judge_groups("renorm_accuracy", groups,
                        "paired Dice of BatchRenorm − the best other norm of the same dataset and batch size")


def _artifacts_grow(rows: list[Row]) -> tuple[str, str]:
    selected = [r for r in _in_distribution(rows, measured=("tm_abs", "tm_abs_small")) if r["norm"] in TILE_WISE]
    hits = [r for r in selected if r["tm_abs_small"] > r["tm_abs"]]
    drops = [r["dice"] - r["dice_small"] for r in selected if known(r.get("dice")) and known(r.get("dice_small"))]
    return count_verdict(len(hits), len(selected)), (
        f"TM_abs with small tiles exceeds TM_abs with the study's tiles in {len(hits)} of {len(selected)} tile-wise "
        "models" + (f"; Dice drop with small tiles {_fmt(min(drops))}–{_fmt(max(drops))}" if drops else ""))


def _architecture(kind: str, label: str) -> Callable[[list[Row]], tuple[str, str]]:
    def check(rows: list[Row]) -> tuple[str, str]:
        selected = done(rows, kind=kind)
        if not selected:
            return "not measured", f"no {label} runs"
        by_norm: dict[str, list[Row]] = {}
        for row in selected:
            by_norm.setdefault(row["norm"], []).append(row)
        parts, hits, total = [], 0, 0
        for norm, norm_rows in sorted(by_norm.items()):
            parts.append(f"{norm} ({len(norm_rows)} seeds): TM_abs {_fmt(row_mean(norm_rows, 'tm_abs'))}, TED_dice "
                         f"{_fmt(row_mean(norm_rows, 'ted_dice'))}, Dice {_fmt(row_mean(norm_rows, 'dice'))}")
        for row in selected:
            if row["norm"] == "batchrenorm" and known(row.get("ted_dice")):
                peers = [r["ted_dice"] for r in by_norm.get("batch", []) if r["seed"] == row["seed"]
                         and known(r.get("ted_dice"))]
                if peers:
                    total += 1
                    hits += row["ted_dice"] <= peers[0]
            if row["norm"] in COMPUTED and known(row.get("tm_abs")):  # with attention, per-voxel norms too
                total += 1
                hits += row["tm_abs"] > _threshold("artifact_tm_abs")
            if kind == "volume" and row["norm"] in ("batch", "batchrenorm") and known(row.get("tm_abs")):
                total += 1
                hits += row["tm_abs"] < _threshold("exact_tm_abs")
        return count_verdict(hits, total), "; ".join(parts) + f" ({hits} of {total} model checks as the paper says)"
    return check




def _claims() -> tuple[Claim, ...]:
    from seamfree.study.transfer_claims import TRANSFER_CLAIMS

    return (
        Claim("Tile-wise norms (InstanceNorm, GroupNorm, LayerNorm) cause tiling artifacts", _tile_wise_artifacts),
        Claim("Global statistics (BatchNorm, BatchRenorm in eval mode) make tiled prediction exact", _global_exact),
        Claim("Tile-wise norms have no train/eval disparity", _tile_wise_no_disparity),
        Claim("BatchNorm has a train/eval disparity that grows as the training batch shrinks", _batchnorm_disparity),
        Claim("BatchNorm's accuracy drops in eval mode under domain shift",
              _eval_drop("zero-shot", "models under domain shift (zero-shot)")),
        Claim("BatchNorm's accuracy drops in eval mode in distribution", _eval_drop("grid", "models in distribution")),
        Claim("BatchRenorm removes the train/eval disparity, even with small batches", _renorm_no_disparity),
        Claim("BatchRenorm keeps the accuracy", _renorm_accuracy),
        Claim("Tiling artifacts grow as tiles shrink", _artifacts_grow),
        *TRANSFER_CLAIMS,
        Claim("The pattern holds for ViT-based models", _architecture("vit", "ViT")),
        Claim("The pattern holds in 3D (anisotropic EM stack)", _architecture("volume", "3D")),
    )


def usable_rows(rows: Sequence[Row]) -> tuple[list[Row], list[str]]:
    """The rows the claims rest on, and why the others were left out.

    - A model that did not train (test Dice below the protocol's ``untrained_dice``) says nothing about its norm.
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
        if row.get("status") == "done" and row.get("kind") in ("grid", "volume", "vit", "equal-samples") \
                and dice is not None and known(dice) and dice < untrained_dice():
            left_out.append(f"{name} (did not train: Dice {dice:.3g})")
        elif row.get("norm") == "instance_tracked" and row.get("batch_size") == 1 and \
                (row.get("dataset"), row.get("seed"), row.get("kind")) in batch_one:
            left_out.append(f"{name} (the same computation as BatchNorm at batch size 1)")
        else:
            kept.append(row)
    return kept, left_out


CLAIMS: tuple[Claim, ...] = _claims()


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
