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
from seamfree.diagnostics.figures import Crops, bars_figure, crops, crops_figure, overview_figures, pyplot
from seamfree.diagnostics.recommend import TM_ABS_NOISE
from seamfree.errors import DataError
from seamfree.io.owned import write_owned

__all__ = ["RenderCheck", "check_rendering", "write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, sans-serif; font-size: 16px; margin: 2em; color: #222; max-width: 1500px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f0f0f0; }
.verdict { font-size: 1.2em; padding: 0.6em 1em; border-radius: 6px; margin: 0.5em 0; }
.seamless { background: #e3f6e3; } .artifacts { background: #fde2e2; } .disparity { background: #fff4d6; }
.models { display: flex; flex-wrap: wrap; gap: 2em; }
.model { flex: 1 1 600px; min-width: 500px; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.crops td, .crops th { text-align: center; vertical-align: top; border: none; }
.crops img { image-rendering: pixelated; border: none; }
.howto { background: #f6f6f6; padding: 0.6em 1em; border-radius: 6px; max-width: 1100px; }
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
            ("instance TM: objects the two tilings segment differently",
             lambda d: None if d.instances is None else f"{d.instances.differing} of "
             f"{d.instances.objects_a + d.instances.objects_b} ({d.instances.fraction:.1%})"),
            ("max |tiled − whole|", lambda d: d.exactness.max_abs), ("Dice vs ground truth", lambda d: d.dice),
            ("mSA / SA50 vs ground-truth instances",
             lambda d: None if d.instance_scores is None else
             f"{d.instance_scores['msa']:.3f} / {d.instance_scores['sa50']:.3f}")]
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


def _model_section(diagnosis: Diagnosis, figures: dict[str, tuple[bytes, str]], own: Crops | None) -> str:
    d = diagnosis
    advice = "".join(f"<li><code>{html.escape(a)}</code></li>" for a in d.recommendation.actions)
    g = d.geometry
    geometry = (f"region {g['region']} of image {g['image_shape']}; core {g['core']}, halo {g['halo']}, tile "
                f"{g['tile_shape']}, grid {g['grid_shape']}; receptive-field radius {list(d.receptive_field.radius)}"
                f"; TED on {d.disparity.batches} batches of {d.disparity.batch_size} × {list(d.disparity.patch_size)}")
    images = "".join(f'<figure><img alt="{key}" src="{_data_uri(png)}"><figcaption>{html.escape(caption)}'
                     f"</figcaption></figure>" for key, (png, caption) in figures.items())
    if own is not None:  # a model diagnosed on its own region: its crops go in its own section
        images = _crops_section([d], own) + images
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

    The page is written to a temporary name and renamed last, so a ``report.html`` that exists is complete. A
    ``report.html``, ``report.json`` or figure of the same name that seamfree did not write is never replaced:
    OutputExistsError, before anything is written (:mod:`seamfree.io.owned`).
    """
    items = [diagnoses] if isinstance(diagnoses, Diagnosis) else list(diagnoses)
    if not items:
        raise DataError("write_report needs at least one diagnosis, got none")
    out = Path(out_dir)
    files: dict[str, bytes | str] = {}
    same_region = len({(tuple(d.prediction.shape[1:]), json.dumps(d.geometry["core"])) for d in items}) == 1
    cut = crops(items) if same_region else None
    sections, slugs = [], _slugs(items)
    for k, (d, slug) in enumerate(zip(items, slugs)):
        own = cut if cut is not None else crops([d])
        figures = overview_figures(d, own.window)
        for key, (png, _) in figures.items():
            files[f"figures/{slug}_{key}.png"] = png
        for key, png in own.images[k if cut is not None else 0].items():
            files[f"figures/{slug}_crop_{key}.png"] = png
        sections.append(_model_section(d, figures, None if cut is not None else own))
    bars = bars_figure(items)
    files["figures/indicators.png"] = bars
    if cut is not None:  # the crops of all models in one picture, for a README or a slide (not in the page)
        files["figures/crops.png"] = crops_figure(items, cut)
    document = {"schema_version": items[0].to_dict()["schema_version"], "diagnoses": [d.to_dict() for d in items]}
    files["report.json"] = json.dumps(_strict_json(document), indent=2, allow_nan=False)
    title = "seamfree diagnosis: " + ", ".join(d.name for d in items)
    files["report.html"] = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style><script>{_LOADED_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        f"{_comparison_table(items)}{_dice_note(items)}"
        f"{_crops_section(items, cut) if cut is not None else ''}{_HOW_TO_READ}"
        f"<figure><img alt='indicators' src='{_data_uri(bars)}'><figcaption>TM and TED per model; the dotted "
        f"line is the noise level of TM_abs ({TM_ABS_NOISE:g})</figcaption></figure>"
        f"<div class='models'>{''.join(sections)}</div></body></html>")
    write_owned(out, files, what="the diagnosis report", legacy=_legacy_report, last="report.html",
                fix="choose another report folder (--out), or move those files away")
    return out / "report.html"


def _legacy_report(path: Path) -> bool:
    """Whether ``path`` is a report file written by seamfree before its folders recorded what they wrote."""
    try:
        if path.name == "report.html":
            return "<title>seamfree diagnosis" in path.read_text(encoding="utf-8", errors="replace")[:4096]
        if path.name == "report.json":
            return "diagnoses" in json.loads(path.read_text())
        if path.parent.name == "figures" and path.suffix == ".png":
            return _legacy_report(path.parent.parent / "report.json")
    except (OSError, ValueError, TypeError):
        return False
    return False


def _slugs(items: Sequence[Diagnosis]) -> list[str]:
    result: list[str] = []
    for d in items:
        slug = "".join(ch if ch.isalnum() else "-" for ch in d.name).strip("-") or "model"
        while slug in result:
            slug += "-2"
        result.append(slug)
    return result


_HOW_TO_READ_TEMPLATE = """<div class="howto"><h3>How to read this</h3><p>
<b>Tile mismatch (TM)</b> compares two tiled predictions of the same image, on grid A and on grid B shifted by
half a core: where two tiles overlap, a model whose output depends on the tile disagrees with itself.
<b>TM_abs</b> is the mean |A − B| of the outputs, <b>TM_dice</b> 1 − Dice of the two binarized predictions;
about 0 (below TM_ABS_NOISE) means tiling cannot change the result.
<b>Train/eval disparity (TED)</b> compares the model in training mode, on training-like batches, with eval mode
on the same patches: large values mean the running statistics do not describe the data (BatchNorm's problem,
not a tiling one). <b>Seam score</b>: the jump of the prediction across each seam over the jump at the same place
predicted on grid B, where it is the interior of a tile (about 1: invisible); seams count as
<b>detected</b> when the excess is significant (z &gt; 4) and at least 5 % (the score's 95 % interval above 1.05),
and <b>faint</b> when the interval lies above 1.05 with 2 &lt; z ≤ 4 (a weak but systematic excess).
<b>max |tiled − whole|</b> compares the tiled prediction with one forward pass over the whole region: 0 means
exact. The crops show one seam crossing (magenta ticks in the margins mark the seams) for every model on the same
colour scales. The definitions, and how the seam test was validated on real images, are in the seamfree
documentation: <code>docs/diagnose.md</code>.</p></div>"""
_HOW_TO_READ = _HOW_TO_READ_TEMPLATE.replace("TM_ABS_NOISE", f"{TM_ABS_NOISE:g}")


def _crops_section(items: Sequence[Diagnosis], cut: Crops) -> str:
    """Every model's crops side by side: input, prediction, |A − B|, on shared scales."""
    y, x = cut.window
    low, high = cut.scales["prediction"]
    top = cut.scales["difference"][1]
    width = (x.stop - x.start) * cut.zoom + 12
    head = "".join(f"<th>{html.escape(d.name)}</th>" for d in items)
    rows = []
    for key, label in (("input", "input"), ("prediction", f"prediction (channel 0, {low:.2g} → {high:.2g})"),
                       ("difference", f"|A − B| (0 → {top:.2g})")):
        cells = "".join(f'<td><img alt="{html.escape(d.name)} {key}" width="{width}" '
                        f'src="{_data_uri(images[key])}"></td>' for d, images in zip(items, cut.images))
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    largest = "; ".join(f"{html.escape(d.name)}: {_fmt(v) if v else '0'}"
                        for d, v in zip(items, cut.largest_difference))
    return (f"<h2>At a seam crossing</h2><table class='crops'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
            f"<p class='caption'>Crop y {y.start}–{y.stop}, x {x.start}–{x.stop} of the diagnosed region "
            f"(centred on the seam crossing at {list(cut.crossing)}, where the models' tiles disagree most), "
            f"{cut.zoom}× enlarged. Largest |A − B| in the crop: {largest}.</p>")


def _dice_note(items: Sequence[Diagnosis]) -> str:
    """Why the models' Dice differ, when there is ground truth: training, not tiling (unless the model is not
    exact)."""
    scored = [d for d in items if d.dice is not None]
    if not scored:
        return ""
    parts = []
    for d in scored:
        tiling = ("tiling changed no label (tiled = whole-image)" if d.exactness.exact and d.exactness.flips == 0
                  else f"tiling changed {d.exactness.flips:.2%} of the labels against a whole-image forward")
        parts.append(f"{html.escape(d.name)}: Dice {d.dice:.3f}, {tiling}")
    why = ""
    if len(scored) > 1:
        best = max(scored, key=lambda d: d.dice or 0.0)
        why = (f" The Dice differences between the models come from what each learned (their training), except for "
               f"the share that tiling changed; {html.escape(best.name)} is the most accurate here. A model that "
               "tiles exactly loses nothing to tiling, whatever its accuracy.")
    return f"<p>Dice of the tiled prediction against the ground truth — {'; '.join(parts)}.{why}</p>"


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
    pixels = pyplot().imread(str(png_path))[..., :3]
    return float(np.mean(np.abs(pixels - 1.0).max(axis=-1) > 0.02))
