"""Shared pieces of the study's results page: Markdown tables, matplotlib on a headless backend, and one colour
per norm across every figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seamfree.errors import require
from seamfree.study import values
from seamfree.study.statistics import Estimate

__all__ = ["NORM_COLOURS", "estimate", "format_value", "interval", "markdown_table", "pyplot"]

NORM_COLOURS = {"batch": "#1f77b4", "batchrenorm": "#2ca02c", "instance": "#d62728", "instance_tracked": "#9467bd",
                "group": "#ff7f0e", "none": "#7f7f7f", "layer": "#e377c2", "layer_spatial": "#8c564b"}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); a clear error when matplotlib is
    missing."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: "–" for a missing value, small floats in scientific notation, others as they are."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of ``lines`` under ``headers`` (cells through :func:`format_value`)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(format_value(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def estimate(rows: Sequence[dict[str, Any]], key: str = "dice") -> Estimate | None:
    """The mean of ``key`` over the rows' test images with its 95 % seed-level bootstrap interval (the seed is the
    unit, :mod:`~seamfree.study.statistics`); None when no row has it."""
    rows = [r for r in rows if values.known(r.get(key))]
    return values.estimate(rows, key) if rows else None


def interval(value: Estimate | None, *, signed: bool = False) -> str:
    """A table cell for an estimate with the mean of every seed after it: "0.951 [0.940, 0.961] · 0.95 0.96 0.94",
    or "–"."""
    if value is None:
        return "–"
    sign = "+" if signed else ""
    text = f"{value.mean:{sign}.3f} [{value.low:{sign}.3f}, {value.high:{sign}.3f}]"
    if len(value.unit_means) > 1:
        text += " · " + " ".join(f"{m:{sign}.2f}" for m in value.unit_means)
    return text
