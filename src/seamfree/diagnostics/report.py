"""Diagnosis reports: ``report.json`` (schema in docs/diagnose.md) and a self-contained ``report.html``.

The HTML page embeds its PNG figures (matplotlib) as data URIs, so it can be mailed or attached to an issue
as one file; the PNGs are also written to ``figures/``. Several diagnoses (e.g. the same image under an
InstanceNorm and a BatchRenorm model) go side by side on one page with a comparison table at the top.
:func:`check_rendering` opens the page in headless Chromium the way a person would and reports whether it
rendered and every figure loaded.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.diagnostics.diagnose import Diagnosis
from seamfree.diagnostics.seams import seam_positions
from seamfree.errors import DataError, require
from seamfree.tiling.grid import TileGrid

__all__ = ["RenderCheck", "check_rendering", "write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1500px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f0f0f0; }
.verdict { font-size: 1.2em; padding: 0.6em 1em; border-radius: 6px; margin: 0.5em 0; }
.seamless { background: #e3f6e3; } .artifacts { background: #fde2e2; } .disparity { background: #fff4d6; }
.models { display: flex; flex-wrap: wrap; gap: 2em; }
.model { flex: 1 1 600px; min-width: 500px; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.bad { color: #b00; font-weight: bold; }
"""

# Sets data-figures-loaded on <body> once every image has decoded: what check_rendering looks for.
_LOADED_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.length > 0 && images.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-figures-loaded', ok ? 'true' : 'false');
  document.body.setAttribute('data-figure-count', String(images.length));
});
"""


def _plt() -> Any:
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _middle_slice(volume: np.ndarray) -> np.ndarray:
    """Return a 2D view: the array itself, or the middle plane of the first axis of a 3D array."""
    return volume if volume.ndim == 2 else volume[volume.shape[0] // 2]


def _grid_of(diagnosis: Diagnosis) -> TileGrid:
    g = diagnosis.geometry
    return TileGrid.create(diagnosis.prediction.shape[1:], g["core"], g["halo"], network_stride=g["network_stride"])


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _plt().close(figure)
    return buffer.getvalue()


def _image_figure(values: np.ndarray, title: str, *, cmap: str, grid: TileGrid | None = None,
                  vmin: float | None = None, vmax: float | None = None, colorbar: bool = False) -> bytes:
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5.2, 5.2 * values.shape[0] / max(values.shape[1], 1) + 0.4))
    shown = axis.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if grid is not None:
        dims = grid.spatial_dims
        for y in seam_positions(grid, dims - 2):
            axis.axhline(y - 0.5, color="#ff00ff", linewidth=0.6, alpha=0.6)
        for x in seam_positions(grid, dims - 1):
            axis.axvline(x - 0.5, color="#ff00ff", linewidth=0.6, alpha=0.6)
    if colorbar:
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
    axis.set_title(title, fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])
    return _png(figure)


def _seam_figure(diagnosis: Diagnosis) -> bytes:
    seam_map = _middle_slice(diagnosis.seams.map)
    # Seam lines are one voxel wide: widen them so that they stay visible in a downscaled figure.
    from scipy import ndimage

    width = max(1, round(max(seam_map.shape) / 300))
    widened = ndimage.maximum_filter(seam_map, size=2 * width + 1)
    top = float(np.percentile(widened[widened > 0], 99)) if (widened > 0).any() else 1.0
    return _image_figure(widened, f"seam map: significant excess jump at core boundaries; "
                         f"{diagnosis.seams.summary}", cmap="magma", vmin=0, vmax=max(top, 1e-6), colorbar=True)


def _bars_figure(diagnoses: Sequence[Diagnosis]) -> bytes:
    plt = _plt()
    names = ["TM_dice", "TM_abs", "TED_dice", "TED_abs"]
    floor = 1e-8
    figure, axis = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(diagnoses)
    for k, d in enumerate(diagnoses):
        values = [d.tile_mismatch.tm_dice, d.tile_mismatch.tm_abs, d.disparity.ted_dice, d.disparity.ted_abs]
        positions = np.arange(len(names)) + (k - (len(diagnoses) - 1) / 2) * width
        bars = axis.bar(positions, [max(v, floor) for v in values], width, label=d.name)
        for bar, value in zip(bars, values):
            axis.annotate(f"{value:.1e}" if value else "0", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
    axis.set_yscale("log")
    axis.set_ylim(floor / 2, 2.0)
    axis.set_xticks(range(len(names)), names)
    axis.axhline(1e-4, color="grey", linestyle=":", linewidth=0.8)
    axis.set_ylabel("value (log; floor 1e-8 = 0)")
    axis.set_title("tile mismatch and train/eval disparity (lower is better)", fontsize=10)
    axis.legend(fontsize=8)
    return _png(figure)


def _figures(diagnosis: Diagnosis) -> dict[str, tuple[bytes, str]]:
    grid = _grid_of(diagnosis)
    image = _middle_slice(diagnosis.image[0])
    low, high = np.percentile(image, [1, 99.8]) if image.size else (0, 1)
    prediction = _middle_slice(diagnosis.prediction[0])
    mismatch = _middle_slice(diagnosis.tile_mismatch.map)
    finite = mismatch[np.isfinite(mismatch)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
    plane = " (middle z plane)" if diagnosis.image.ndim == 4 else ""
    return {
        "input": (_image_figure(image, f"input{plane}", cmap="gray", vmin=float(low), vmax=float(high)),
                  "the image region diagnosed"),
        "prediction": (_image_figure(prediction, "tiled prediction, channel 0 (magenta: seams)", cmap="viridis",
                                     grid=grid, vmin=0, vmax=1), "crop-stitched prediction on the diagnosis grid"),
        "seams": (_seam_figure(diagnosis), "|P[b] − P[b−1]| across each seam; seamless models show noise only"),
        "mismatch": (_image_figure(np.ma.masked_invalid(mismatch), "tile mismatch |A − B| (grid B shifted by half "
                                   "a core)", cmap="inferno", vmin=0, vmax=top, colorbar=True),
                     "where two overlapping tiles disagree; blank where grid B did not predict"),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return html.escape(str(value))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _verdict_class(verdict: str) -> str:
    return {"seamless": "seamless", "tiling artifacts": "artifacts"}.get(verdict, "disparity")


def _comparison_table(diagnoses: Sequence[Diagnosis]) -> str:
    rows = [("verdict", lambda d: d.recommendation.verdict), ("norm audit", lambda d: d.audit.verdict),
            ("tiling verdict (audit + probe)", lambda d: None if d.model is None else d.model.verdict),
            ("TM_dice", lambda d: d.tile_mismatch.tm_dice), ("TM_abs", lambda d: d.tile_mismatch.tm_abs),
            ("TM_dice (shifted grid)", lambda d: d.tile_mismatch.shifted_tm_dice),
            ("TED_dice", lambda d: d.disparity.ted_dice), ("TED_abs", lambda d: d.disparity.ted_abs),
            ("ΔDice (train − eval)", lambda d: d.disparity.delta_dice), ("seam score", lambda d: d.seams.score),
            ("seams (z > 4, interval > 1.05)", lambda d: d.seams.summary),
            ("max |tiled − whole|", lambda d: d.exactness.max_abs), ("Dice vs ground truth", lambda d: d.dice)]
    head = "".join(f"<th>{html.escape(d.name)}</th>" for d in diagnoses)
    body = "".join(f"<tr><th>{label}</th>" + "".join(f"<td>{_fmt(get(d))}</td>" for d in diagnoses) + "</tr>"
                   for label, get in rows)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _audit_table(diagnosis: Diagnosis) -> str:
    rows = []
    for layer in diagnosis.audit.layers:
        flag = {True: '<span class="bad">depends on tile</span>', False: "fixed", None: "unknown"}
        rows.append(f"<tr><td>{html.escape(layer.name)}</td><td>{html.escape(layer.type)}</td>"
                    f"<td>{layer.statistics}</td><td>{flag[layer.tile_dependent]}</td></tr>")
    if not rows:
        rows.append('<tr><td colspan="4">no normalization layers</td></tr>')
    return ("<table><tr><th>layer</th><th>type</th><th>statistics at inference</th><th>tile</th></tr>"
            + "".join(rows) + "</table>")


def _model_section(diagnosis: Diagnosis, figures: dict[str, tuple[bytes, str]]) -> str:
    d = diagnosis
    advice = "".join(f"<li><code>{html.escape(a)}</code></li>" for a in d.recommendation.actions)
    g = d.geometry
    geometry = (f"region {g['region']} of image {g['image_shape']}; core {g['core']}, halo {g['halo']}, tile "
                f"{g['tile_shape']}, grid {g['grid_shape']}; receptive-field radius {list(d.receptive_field.radius)}"
                f"; TED on {d.disparity.batches} batches of {d.disparity.batch_size} × {list(d.disparity.patch_size)}")
    images = "".join(f'<figure><img alt="{key}" src="{_data_uri(png)}"><figcaption>{html.escape(caption)}'
                     f"</figcaption></figure>" for key, (png, caption) in figures.items())
    return (f'<div class="model"><h2>{html.escape(d.name)}</h2>'
            f'<div class="verdict {_verdict_class(d.recommendation.verdict)}"><b>{d.recommendation.verdict}</b>: '
            f"{html.escape(d.recommendation.message)}</div><p>What to do:</p><ul>{advice}</ul>"
            f"<p>{html.escape(geometry)}</p>{_evidence(d)}<h3>Normalization audit: {html.escape(d.audit.summary)}</h3>"
            f"{_audit_table(d)}{images}</div>")


def _evidence(diagnosis: Diagnosis) -> str:
    """The tiling verdict, which evidence decided it, and what the model description noticed."""
    info = diagnosis.model
    if info is None:
        return ""
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in info.notes)
    return (f"<p><b>Tiling verdict: {html.escape(info.verdict)}</b>, decided by {html.escape(info.evidence)}. "
            f"Model: {html.escape(info.kind)}, {info.spatial_dims}D, {info.in_channels} → {info.out_channels} "
            f"channel(s), network stride {list(info.network_stride)}.</p>" + (f"<ul>{notes}</ul>" if notes else ""))


def write_report(diagnoses: Diagnosis | Sequence[Diagnosis], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.json``, ``report.html`` and ``figures/*.png`` to ``out_dir``; return the HTML path.

    The page is written to a temporary name and renamed last, so a ``report.html`` that exists is complete.
    """
    items = [diagnoses] if isinstance(diagnoses, Diagnosis) else list(diagnoses)
    if not items:
        raise DataError("write_report needs at least one diagnosis, got none")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    sections, slug_seen = [], set()
    for d in items:
        figures = _figures(d)
        slug = "".join(ch if ch.isalnum() else "-" for ch in d.name).strip("-") or "model"
        while slug in slug_seen:
            slug += "-2"
        slug_seen.add(slug)
        for key, (png, _) in figures.items():
            (out / "figures" / f"{slug}_{key}.png").write_bytes(png)
        sections.append(_model_section(d, figures))
    bars = _bars_figure(items)
    (out / "figures" / "indicators.png").write_bytes(bars)
    document = {"schema_version": items[0].to_dict()["schema_version"], "diagnoses": [d.to_dict() for d in items]}
    (out / "report.json").write_text(json.dumps(_strict_json(document), indent=2, allow_nan=False))
    title = "seamfree diagnosis: " + ", ".join(d.name for d in items)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script>{_LOADED_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
            f"{_comparison_table(items)}<figure><img alt='indicators' src='{_data_uri(bars)}'><figcaption>TM and "
            f"TED per model; the dotted line is the noise level of TM_abs (1e-4)</figcaption></figure>"
            f"<div class='models'>{''.join(sections)}</div></body></html>")
    partial = out / "report.html.partial"
    partial.write_text(page, encoding="utf-8")
    partial.replace(out / "report.html")
    return out / "report.html"


def _strict_json(value: Any) -> Any:
    """Return ``value`` with numpy scalars as Python numbers and NaN/inf as null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class RenderCheck:
    """What headless Chromium saw: whether every figure loaded, and how much of the screenshot is not blank."""

    figures_loaded: bool
    figure_count: int
    nonblank_fraction: float
    screenshot: Path


def find_chromium() -> str | None:
    """Return the path of a Chromium/Chrome executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def check_rendering(html_path: str | os.PathLike[str], screenshot: str | os.PathLike[str] | None = None, *,
                    timeout: float = 120.0) -> RenderCheck:
    """Return what headless Chromium renders for ``html_path`` (screenshot written to ``screenshot``)."""
    browser = find_chromium()
    if browser is None:
        raise DataError("no Chromium found to render the report; install it (Debian: apt-get install chromium)")
    page = Path(html_path).resolve().as_uri()
    shot = Path(screenshot) if screenshot else Path(tempfile.mkdtemp()) / "report.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000", f"--user-data-dir={tempfile.mkdtemp()}"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=timeout, check=False)
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2400", page], capture_output=True,
                   timeout=timeout, check=False)
    loaded = 'data-figures-loaded="true"' in dom.stdout
    count_text = dom.stdout.split('data-figure-count="', 1)[1].split('"', 1)[0] if "data-figure-count" in dom.stdout \
        else "0"
    return RenderCheck(loaded, int(count_text), _nonblank_fraction(shot), shot)


def _nonblank_fraction(png_path: Path) -> float:
    if not png_path.exists():
        return 0.0
    plt = _plt()
    pixels = plt.imread(str(png_path))[..., :3]
    return float(np.mean(np.abs(pixels - 1.0).max(axis=-1) > 0.02))
