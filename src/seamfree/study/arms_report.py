"""The round-three sections of the results page: how the intervals are computed, TED as a training batch ×
measurement batch table with BatchRenorm's clip rate, the blending arm, the equal-samples arm, and the instance-level
damage of tiling beside the seed-to-seed noise floor.

Every interval is seed-level (:mod:`seamfree.study.statistics`), printed with each seed's mean after "·".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.layers.registry import display_order, norm_spec
from seamfree.study.arms import BLEND_OVERLAPS, MEASUREMENT_BATCHES, blend_key
from seamfree.study.page import estimate, format_value, interval, markdown_table
from seamfree.study.protocol import protocol
from seamfree.study.values import Row, done, known, paired_estimate, row_mean, within_difference

__all__ = ["blending_section", "equal_samples_section", "instance_noise_section", "seam_test_section",
           "statistics_note", "ted_table_section"]


def statistics_note() -> str:
    """How every interval on the page is computed (the unit, the bootstrap, the correction, the protocol)."""
    p = protocol()
    return (f"**Unit of every interval: the seed.** The test images of one seed are measured on one trained model, "
            f"so they are not independent: each interval is a two-stage percentile bootstrap "
            f"({p.bootstrap_resamples} resamples) that draws seeds with replacement, then the images of each drawn "
            f"seed with replacement; paired differences pair the same seed and test image. Each seed's mean follows "
            f"the interval after ·. Tables show {p.level:.0%} intervals; a claim judged in m groups uses "
            f"{p.correction} intervals at 1 − {1 - p.level:.2f}/m each, and needs ≥ {p.min_units} seeds to decide. "
            "The endpoints, sides, bounds and the verdict rule (the same in both directions) were fixed before "
            "these runs in [protocol.md](protocol.md).")


def _label(norm: str) -> str:
    return norm_spec(norm).label




def _estimate(rows: Sequence[Row], key: str) -> str:
    rows = [r for r in rows if known(r.get(key))]
    return interval(estimate(rows, key)) if rows else "–"


def _unbatched(rows: Sequence[Row]) -> list[Row]:
    return [{**r, "batch_size": None} for r in rows]


def ted_table_section(rows: Sequence[Row]) -> str:
    """TED_dice of BatchNorm and BatchRenorm by training batch (rows) and measurement batch (columns)."""
    grid = done(rows, kind="grid")
    measured = [b for b in MEASUREMENT_BATCHES if any(known(r.get(f"ted_dice_m{b}")) for r in grid)]
    if not measured:
        return ""
    parts = []
    for dataset in sorted({r["dataset"] for r in grid}):
        lines = []
        for norm in ("batch", "batchrenorm"):
            selected = [r for r in grid if r["dataset"] == dataset and r["norm"] == norm]
            trained = sorted({r["batch_size"] for r in selected})
            for batch in trained:
                group = [r for r in selected if r["batch_size"] == batch]
                clip = [r["clip_rate"] for r in group if known(r.get("clip_rate"))]
                lines.append([_label(norm), batch, *(_estimate(group, f"ted_dice_m{m}") for m in measured),
                              f"{np.mean(clip):.2%} (max {max(clip):.2%})" if clip else "–"])
            if len(trained) >= 2:  # the training-batch effect at a fixed measurement batch, paired by seed, image
                small, large = ([r for r in selected if r["batch_size"] == b] for b in (trained[0], trained[-1]))
                lines.append([_label(norm), f"b{trained[0]} − b{trained[-1]}",
                              *(interval(paired_estimate(_unbatched(small), _unbatched(large), f"ted_dice_m{m}"),
                                         signed=True) for m in measured), ""])
        parts.append(f"### {dataset}\n\n" + markdown_table(
            ("norm", "training batch", *(f"TED_dice, measured at batch {m}" for m in measured),
             "BatchRenorm r/d clip rate (at its training batch)"), lines))
    return ("TED_dice measured on training-like batches of each size, for models trained at each batch size: "
            "the grid's TED column changes training and measurement batch together; this table separates them. "
            "The b_small − b_large rows are the training-batch effect at a fixed measurement batch (paired by seed "
            "and image). The clip rate is the share of BatchRenorm's per-channel corrections (r, d) that hit their "
            "bounds on the model's own training-like batches: where none do, its train-mode output equals its "
            "eval-mode output and TED is 0 by construction, so a TED near 0 says nothing more than a clip rate "
            "near 0.\n\n" + "\n\n".join(parts))


def blending_section(rows: Sequence[Row]) -> str:
    """Crop stitching against Gaussian blending at each overlap: Dice, and the shifted-grid difference."""
    grid = [r for r in done(rows, kind="grid") if known(r.get("shift_abs_crop"))]
    if not grid:
        return ""
    modes = ["crop", *(blend_key(o) for o in BLEND_OVERLAPS if any(known(r.get(f"dice_{blend_key(o)}"))
                                                                    for r in grid))]
    names = {"crop": "crop", **{blend_key(o): f"blend {o:g}" for o in BLEND_OVERLAPS}}
    parts = []
    for dataset in sorted({r["dataset"] for r in grid}):
        lines = []
        for (norm, batch), group in _by(grid, dataset):
            lines.append([_label(norm), batch, *(_estimate(group, f"dice_{m}") for m in modes),
                          *(interval(within_difference(group, f"dice_{m}", "dice_crop"), signed=True)
                            for m in modes[1:]),
                          *(format_value(row_mean(group, f"shift_abs_{m}")) for m in modes)])
        parts.append(f"### {dataset}\n\n" + markdown_table(
            ("norm", "batch", *(f"Dice {names[m]}" for m in modes), *(f"Dice {names[m]} − crop" for m in modes[1:]),
             *(f"shift |Δ| {names[m]}" for m in modes)), lines))
    return ("The practitioner's workaround: blend stitching with Gaussian weights (MONAI's window, σ = 0.125 × "
            "tile) at core overlaps of 0.25 and 0.5 of the core, against crop stitching, on the same core. "
            "Dice against the ground truth (first test images of every seed), and shift |Δ|: the mean absolute "
            "difference between the prediction of the image and that of the image cut by half a tile step (every "
            "tile boundary moved to the middle of a former tile), compared a core away from the borders: 0 when the "
            "prediction does not depend on where the tiles lie. Blending overlapping tiles costs "
            "1/(1 − overlap)^2 the forwards in 2D (1.8× at 0.25, 4× at 0.5).\n\n" + "\n\n".join(parts))


def _by(rows: Sequence[Row], dataset: str) -> list[tuple[tuple[str, int], list[Row]]]:
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        if row["dataset"] == dataset:
            groups.setdefault((row["norm"], row["batch_size"]), []).append(row)
    return sorted(groups.items(), key=lambda item: (display_order(item[0][0]), item[0][1]))


def equal_samples_section(rows: Sequence[Row]) -> str:
    """The equal-samples arm beside the grid's models: each batch size and learning rate, the rate to read chosen
    on validation Dice."""
    arm = done(rows, ("dice",), kind="equal-samples")
    if not arm:
        return ""
    grid = done(rows, ("dice",), kind="grid")
    parts = []
    for dataset in sorted({r["dataset"] for r in arm}):
        lines = []
        for norm in sorted({r["norm"] for r in arm if r["dataset"] == dataset}, key=display_order):
            peers = [r for r in grid if r["dataset"] == dataset and r["norm"] == norm]
            reference = [r for r in peers if r["batch_size"] == max((p["batch_size"] for p in peers), default=0)]
            for batch in sorted({r["batch_size"] for r in peers}):
                group = [r for r in peers if r["batch_size"] == batch]
                lines.append([_label(norm), f"grid: batch {batch}, recipe", len(group), _estimate(group, "dice"),
                              _estimate(group, "ted_dice"), format_value(row_mean(group, "val_dice")), ""])
            mine = [r for r in arm if r["dataset"] == dataset and r["norm"] == norm]
            for batch in sorted({r["batch_size"] for r in mine}):
                sized = [r for r in mine if r["batch_size"] == batch]
                rates = sorted({r["learning_rate"] for r in sized})
                chosen = max(rates, key=lambda lr: row_mean([r for r in sized if r["learning_rate"] == lr],
                                                         "val_dice") or 0)
                factor = _factor(sized[0])
                for rate in rates:
                    group = [r for r in sized if r["learning_rate"] == rate]
                    versus = paired_estimate(_unbatched(group), _unbatched(reference), "dice") if reference else None
                    lines.append([_label(norm), f"batch {batch} × {factor} the iterations, lr {rate:g}"
                                  + (" ★" if rate == chosen and len(rates) > 1 else ""), len(group),
                                  _estimate(group, "dice"), _estimate(group, f"ted_dice_m{batch}"),
                                  format_value(row_mean(group, "val_dice")), interval(versus, signed=True)])
        parts.append(f"### {dataset}\n\n" + markdown_table(
            ("norm", "model", "seeds", "Dice", "TED_dice (at its training batch)", "validation Dice",
             "Dice − the grid's largest batch (paired)"), lines))
    return ("The grid trains every batch size for the same iterations, so a batch-1 model sees 8× fewer samples than "
            "a batch-8 one, at one learning rate. Here batch-1 models train for 8× the iterations (as many samples "
            "as batch 8), and every batch size at each learning rate of a small sweep; ★ marks the rate with the "
            "best mean validation Dice over seeds (chosen without the test images), the one to read.\n\n"
            + "\n\n".join(parts))


def _factor(row: Row) -> str:
    name = str(row.get("name", ""))
    marker = f"-b{row['batch_size']}x"
    return name.split(marker, 1)[1].split("-", 1)[0] if marker in name else "?"


def _seed_pairs_fraction(predictions: list[np.ndarray], objects: str) -> list[float]:
    from seamfree.diagnostics.instances import instance_tile_mismatch

    fractions = []
    for first, second in itertools.combinations(predictions, 2):
        if first.shape == second.shape:
            mismatch = instance_tile_mismatch(first[None].astype(np.float32), second[None].astype(np.float32),
                                              activation="sigmoid", threshold=0.5, objects=objects)
            fractions.append(mismatch.fraction)
    return fractions


def instance_noise_section(rows: Sequence[Row], run_dirs: dict[str, Path]) -> str:
    """Objects that two tilings segment differently (tile-wise norms) beside objects that two seeds of the same
    configuration segment differently (every norm): damage above the floor is the tiling's."""
    grid = [r for r in done(rows, kind="grid") if r["name"] in run_dirs]
    parts = []
    for dataset in sorted({r["dataset"] for r in grid}):
        objects = "background" if "membranes" in dataset else "foreground"
        lines = []
        for (norm, batch), group in _by(grid, dataset):
            predictions = [_example_prediction(run_dirs[r["name"]]) for r in group]
            floor = _seed_pairs_fraction([p for p in predictions if p is not None], objects)
            lines.append([_label(norm), batch, len(group), format_value(row_mean(group, "instance_tm")),
                          format_value(row_mean(group, "instance_tm_small")),
                          format_value(float(np.mean(floor)) if floor else None),
                          format_value(max(floor) if floor else None)])
        if lines:
            parts.append(f"### {dataset}\n\n" + markdown_table(
                ("norm", "batch", "seeds", "instance TM", "instance TM small tiles",
                 "seed-to-seed (mean over pairs)", "seed-to-seed (largest)"), lines))
    if not parts:
        return ""
    return ("Instance TM: the share of objects that two tilings (shifted by half a tile) segment differently, mean "
            "over the test images. The noise floor: the share of objects that two seeds of the same norm and batch "
            "size segment differently on the first test image (small-tile predictions), every pair of seeds. "
            "Tiling damage is only meaningful where it exceeds that floor; for exact norms the instance TM is 0 "
            "while the floor is not.\n\n" + "\n\n".join(parts))


def _example_prediction(directory: Path) -> np.ndarray | None:
    path = directory / "example.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        prediction: Any = data["prediction"]
        return np.asarray(prediction, dtype=np.float32)


def seam_test_section(rows: Sequence[Row]) -> str:
    """The calibrated seam test's rates on the study's models, which no calibration or validation case came from."""
    from seamfree.study.claims import FIXED, TILE_WISE

    grid = [r for r in done(rows, kind=("grid", "vit", "volume")) if known(r.get("seams_detected"))]
    if not grid:
        return ""
    lines = []
    for label, norms, threshold in (("tile-wise norms (artifacts expected)", TILE_WISE, "detected"),
                                    ("global statistics (exact tiling)", FIXED, "false alarm")):
        for key, tiles in (("seams_detected", "study tiles"), ("seams_detected_small", "small tiles")):
            selected = [r for r in grid if r["norm"] in norms and known(r.get(key))]
            images = [len(r.get("dice_images") or [0]) for r in selected]
            flagged = sum(r[key] * n for r, n in zip(selected, images))
            total = sum(images)
            if total:
                lines.append([label, tiles, len(selected), total, f"{flagged:.0f} of {total} ({flagged / total:.0%})",
                              threshold])
    return ("The seam test of `seamfree diagnose` (thresholds calibrated once on synthetic and held-out cases, "
            "`benchmarks/seam_calibration.py`, validated on others, `benchmarks/seam_validation.py`) applied to "
            "this page's models, none of which took part in either: the share of test images flagged as seamed.\n\n"
            + markdown_table(("models", "tiles", "models", "test images", "flagged", "reads as"), lines))
