"""The before/after report of a fix: ``fix.json`` and ``fix.html`` in a folder."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from seamfree.errors import OutputExistsError
from seamfree.fix.fix import FixResult
from seamfree.io.owned import write_owned

__all__ = ["REPORT_FILES", "write_fix_report"]

REPORT_FILES = ("fix.json", "fix.html")

_ROWS = (("tile_error", "max |tiled − whole| (held-out data, core {core})"),
         ("seams", "seams in the tiled prediction (seamfree seams at its grid)"),
         ("ted_dice", "train/eval disparity TED_dice (batches of 2)"),
         ("dice_ground_truth", "Dice against the ground truth"))


def write_fix_report(result: FixResult, folder: str | Path, *, model: str, fixed: str,
                     overwrite: bool = False) -> Path:
    """Write ``fix.json`` and ``fix.html`` into ``folder``; return the HTML path.

    Files of those names are replaced only with ``overwrite``, and only when seamfree wrote them (nothing else in
    the folder is touched)."""
    folder = Path(folder)
    existing = [name for name in REPORT_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{str(folder)!r} already holds {', '.join(existing)}; pass --overwrite to replace "
                                "them, or choose another --report folder")
    payload = {"model": model, "fixed": fixed, **result.to_dict()}
    write_owned(folder, {"fix.json": json.dumps(payload, indent=1, default=str), "fix.html": _html(payload)},
                what="the fix report", legacy=_legacy, last="fix.html",
                fix="choose another --report folder, or move those files away")
    return folder / "fix.html"


def _legacy(path: Path) -> bool:
    """A fix report written before report folders recorded what seamfree wrote into them."""
    try:
        if path.name == "fix.json":
            return {"before", "after"} <= set(json.loads(path.read_text()))
        return path.name == "fix.html" and _legacy(path.with_name("fix.json"))
    except (OSError, ValueError, TypeError):
        return False


def _value(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else html.escape(str(value))


def _html(payload: dict[str, Any]) -> str:
    before, after = payload["before"], payload["after"]
    core = "×".join(str(c) for c in before.get("tile_core") or [])
    rows = "".join(f"<tr><td>{label.format(core=core)}</td><td>{_value(before.get(key))}</td>"
                   f"<td>{_value(after.get(key))}</td></tr>" for key, label in _ROWS
                   if before.get(key) is not None or after.get(key) is not None)
    agreement = payload.get("agreement") or {}
    history = "".join(f"<tr><td>{h['iteration']}</td><td>{h['loss']:.4f}</td><td>{h['dice']:.3f}</td>"
                      f"<td>{h['max_abs']:.3g}</td></tr>" for h in payload.get("history") or [])
    reached = "reached" if payload["reached"] else "<b>not reached</b>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seamfree fix: {html.escape(payload['model'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f2f2f2}}</style></head><body>
<h1>seamfree fix</h1>
<p><b>{html.escape(payload['model'])}</b> → <b>{html.escape(payload['fixed'])}</b>, method
<b>{html.escape(payload['method'])}</b>: {html.escape(payload['reason'])}. {payload['seconds']:.0f} s.</p>
<h2>Before and after</h2>
<table><tr><th>measure</th><th>original</th><th>fixed</th></tr>{rows}</table>
<h2>Agreement with the original</h2>
<p>On {html.escape(str(agreement.get('held_out', '–')))} (not used for training): Dice of the masks
{_value(agreement.get('dice'))} (target {payload['target']:g}: {reached}), largest |Δ probability|
{_value(agreement.get('max_abs'))}, mean {_value(agreement.get('mean_abs'))}.</p>
{"<h2>Training</h2><table><tr><th>step</th><th>loss</th><th>held-out Dice</th><th>max |Δp|</th></tr>" + history
 + "</table>" if history else ""}
</body></html>
"""
