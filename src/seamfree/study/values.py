"""Rows of a study table as the statistics need them: selected, image by image, paired, with their units.

The unit of every value is the trained model's seed (with its dataset, so that values pooled over datasets keep
one unit per model): :func:`unit_values` and :func:`paired_values` return the units beside the values, for
:func:`~seamfree.study.statistics.bootstrap_ci` ``units=``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from seamfree.study.protocol import protocol
from seamfree.study.statistics import Estimate, bootstrap_ci, paired_difference

__all__ = ["Row", "done", "estimate", "grid_groups", "known", "paired_estimate", "paired_values", "per_image_values",
           "row_mean", "unit", "unit_values", "within_difference"]

Row = dict[str, Any]


def known(value: Any) -> bool:
    """Whether a table cell holds a number (not empty, not NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def done(rows: Sequence[Row], measured: tuple[str, ...] = (), **where: Any) -> list[Row]:
    """The finished rows matching ``where`` (a value, or a tuple of accepted values) in which every ``measured``
    quantity is known: a row that lacks one is left out (it neither passes nor fails a claim), never a 0."""
    selected = []
    for row in rows:
        if row.get("status") != "done" or not all(known(row.get(k)) for k in measured):
            continue
        if all((row.get(k) in v) if isinstance(v, tuple) else row.get(k) == v for k, v in where.items()):
            selected.append(row)
    return selected


def grid_groups(rows: Sequence[Row], norm: str, key: str, kind: str = "grid") -> dict[tuple[str, int], list[Row]]:
    """The rows of ``kind`` and ``norm`` with ``key`` measured, by (dataset, training batch size); every seed in a
    group."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in done(rows, (key,), kind=kind, norm=norm):
        groups.setdefault((row["dataset"], row["batch_size"]), []).append(row)
    return dict(sorted(groups.items()))


def unit(row: Row) -> Hashable:
    """The experimental unit of a row's values: its model's seed (and dataset, and the source pair's test set)."""
    return (row.get("dataset"), row.get("test"), row.get("seed"))


def _images(row: Row, key: str) -> list[float]:
    return [v for v in row.get(f"{key}_images") or [] if known(v)]


def unit_values(rows: Sequence[Row], key: str) -> tuple[list[float], list[Hashable]]:
    """``key`` image by image (the ``<key>_images`` column) where recorded, else the row's mean, for every row,
    with the unit of each value."""
    values: list[float] = []
    units: list[Hashable] = []
    for row in rows:
        row_values = _images(row, key) or [row[key]]
        values.extend(row_values)
        units.extend([unit(row)] * len(row_values))
    return values, units


def row_mean(rows: Sequence[Row], key: str) -> float | None:
    """The mean of ``key`` over the rows where it is known (None when none is)."""
    values = [r[key] for r in rows if known(r.get(key))]
    return sum(values) / len(values) if values else None


def per_image_values(rows: Sequence[Row], key: str) -> list[float]:
    """The values of :func:`unit_values` without their units."""
    return unit_values(rows, key)[0]


def estimate(rows: Sequence[Row], key: str, *, level: float | None = None) -> Estimate:
    """The mean of ``key`` over the rows' images with its seed-level interval."""
    values, units = unit_values(rows, key)
    return bootstrap_ci(values, units=units, level=level or protocol().level,
                        resamples=protocol().bootstrap_resamples)


def paired_values(a_rows: Sequence[Row], b_rows: Sequence[Row],
                  key: str) -> tuple[list[float], list[float], list[Hashable]]:
    """Values of ``key`` matched one to one, and the unit of each pair: rows of the same dataset, test set and seed
    (and batch size and number of adaptation images k where both have one), then image by image where both
    recorded the same number of images, else their means."""
    a_values: list[float] = []
    b_values: list[float] = []
    units: list[Hashable] = []
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
        pairs = [(u, v) for u, v in zip(x, y) if known(u) and known(v)] if x and len(x) == len(y) else []
        pairs = pairs or [(a[key], b[key])]
        a_values.extend(u for u, _ in pairs)
        b_values.extend(v for _, v in pairs)
        units.extend([unit(a)] * len(pairs))
    return a_values, b_values, units


def paired_estimate(a_rows: Sequence[Row], b_rows: Sequence[Row], key: str, *,
                    level: float | None = None) -> Estimate | None:
    """The seed-level paired difference ``a − b`` of ``key`` (None when nothing pairs)."""
    a, b, units = paired_values(a_rows, b_rows, key)
    if not a:
        return None
    return paired_difference(a, b, units=units, level=level or protocol().level,
                             resamples=protocol().bootstrap_resamples)


def within_difference(rows: Sequence[Row], key_a: str, key_b: str) -> Estimate | None:
    """The seed-level paired difference ``key_a − key_b`` measured on the same rows and images (None without)."""
    measured = [r for r in rows if known(r.get(key_a)) and known(r.get(key_b))]
    other = [{**r, key_a: r[key_b], f"{key_a}_images": r.get(f"{key_b}_images")} for r in measured]
    return paired_estimate(measured, other, key_a)
