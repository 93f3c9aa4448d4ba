"""Shared pieces of the study's results page: Markdown tables, matplotlib on a headless backend, and one colour
per norm across every figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seamfree.errors import require
from seamfree.study.claims import per_image_values
from seamfree.study.statistics import Estimate, bootstrap_ci

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
    """The mean of ``key`` over the rows' test images (every seed) with its 95 % bootstrap interval; None when no
    row has it."""
    rows = [r for r in rows if r.get(key) is not None]
    return bootstrap_ci(per_image_values(rows, key)) if rows else None


def interval(value: Estimate | None) -> str:
    """A table cell for an estimate: "0.951 [0.940, 0.961]", or "–"."""
    if value is None:
        return "–"
    return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"
