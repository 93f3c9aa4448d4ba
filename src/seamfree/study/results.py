"""``write_results(rows, path)``: the study's tables, figures and claim verdicts as one Markdown page.

The page (docs/results.md in the repository) states the command that regenerates it and the hardware it ran
on, then the verdict on each claim of the paper, the tables per experiment and three figures (Dice vs tile
mismatch, TED vs training batch size, the same region predicted by an InstanceNorm and a BatchRenorm model).
Figures are PNG files in ``figures/`` next to the page.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import OutputExistsError
from seamfree.layers.registry import NORMS, display_order
from seamfree.study.arms_report import (
    blending_section,
    equal_samples_section,
    instance_noise_section,
    seam_test_section,
    statistics_note,
    ted_table_section,
)
from seamfree.study.claims import check_claims
from seamfree.study.config import TransferConfig
from seamfree.study.page import NORM_COLOURS, estimate, format_value, interval, markdown_table, pyplot
from seamfree.study.protocol import protocol
from seamfree.study.transfer_report import transfer_section

__all__ = ["Hardware", "describe_hardware", "write_results"]

Row = dict[str, Any]

NORM_LABELS = {spec.name: spec.label for spec in NORMS}


@dataclass(frozen=True)
class Hardware:
    """Where a study ran."""

    cpu: str
    cores: int
    threads: int
    device: str
    torch: str
    python: str

    def describe(self) -> str:
        return (f"{self.cpu}, {self.cores} CPU cores ({self.threads} torch threads), device {self.device}; "
                f"torch {self.torch}, Python {self.python}")


def describe_hardware(device: str = "cpu") -> Hardware:
    """Return the CPU model, core count, torch threads and versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    return Hardware(cpu, os.cpu_count() or 1, torch.get_num_threads(), device, torch.__version__,
                    platform.python_version())


def _norm_key(norm: str) -> int:
    return display_order(norm)


def _done(rows: Sequence[Row], kind: str) -> list[Row]:
    return sorted((r for r in rows if r["kind"] == kind and r["status"] == "done"),
                  key=lambda r: (r["dataset"], _norm_key(r["norm"]), r["batch_size"], r["seed"]))


IN_DISTRIBUTION = ("norm", "batch", "seeds", "Dice", "Dice small tiles", "TM_dice", "TM_abs", "TM_abs small tiles",
                   "TED_dice", "ΔDice", "seam score", "seam score small", "max Δ tiled vs whole",
                   "instance TM small tiles", "mSA")
TABLE_NOTE = ("Dice, TED_dice and ΔDice: mean over the seeds' test images, with its 95 % seed-level bootstrap interval "
              "and each seed's mean after ·; the other columns: mean over seeds (max Δ tiled vs whole: the largest).")


def _mean(rows: Sequence[Row], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _by_model(rows: Sequence[Row]) -> list[list[Row]]:
    """The rows of each (norm, batch size), every seed together, in the rows' order."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["norm"], row["batch_size"]), []).append(row)
    return list(groups.values())


def _in_distribution_lines(rows: Sequence[Row]) -> list[list[Any]]:
    lines = []
    for group in _by_model(rows):
        first = group[0]
        largest = max((r["exact_max_abs"] for r in group if r.get("exact_max_abs") is not None), default=None)
        lines.append([NORM_LABELS.get(first["norm"], first["norm"]), first["batch_size"], len(group),
                      interval(estimate(group, "dice")), _mean(group, "dice_small"), _mean(group, "tm_dice"),
                      _mean(group, "tm_abs"), _mean(group, "tm_abs_small"), interval(estimate(group, "ted_dice")),
                      interval(estimate(group, "delta_dice")), _mean(group, "seam_score"),
                      _mean(group, "seam_score_small"), largest, _mean(group, "instance_tm_small"),
                      _mean(group, "msa")])
    return lines


def _grid_section(rows: Sequence[Row]) -> str:
    grid = _done(rows, "grid")
    parts = []
    for dataset in sorted({r["dataset"] for r in grid}):
        selected = [r for r in grid if r["dataset"] == dataset]
        parts.append(f"### {dataset}\n\n{markdown_table(IN_DISTRIBUTION, _in_distribution_lines(selected))}")
    return TABLE_NOTE + "\n\n" + "\n\n".join(parts) if parts else "No grid run has finished."


def _dice_vs_tm(rows: Sequence[Row], path: Path) -> bool:
    selected = [r for r in rows if r["status"] == "done" and r["kind"] in ("grid", "vit", "volume")
                and r["dice"] is not None and r["tm_abs"] is not None]
    if not selected:
        return False
    plt = pyplot()
    datasets = sorted({r["dataset"] for r in selected})
    figure, axes = plt.subplots(1, len(datasets), figsize=(3.9 * len(datasets) + 0.6, 4), squeeze=False)
    markers = {"grid": "o", "vit": "^", "volume": "s"}
    for axis, dataset in zip(axes[0], datasets):
        for norm in sorted({r["norm"] for r in selected}, key=_norm_key):
            for kind, marker in markers.items():
                points = [r for r in selected if r["norm"] == norm and r["kind"] == kind and r["dataset"] == dataset]
                if points:
                    axis.scatter([max(r["tm_abs"], 1e-9) for r in points], [r["dice"] for r in points],
                                 marker=marker, color=NORM_COLOURS.get(norm, "black"), alpha=0.8, s=40,
                                 label=NORM_LABELS.get(norm, norm) if kind == "grid" else None)
        axis.set_xscale("log")
        axis.axvline(protocol().thresholds["artifact_tm_abs"], color="grey", lw=0.8, ls="--")
        axis.set_xlabel("TM_abs (log; ≤ 1e-9 drawn at 1e-9)", fontsize=8)
        axis.set_title(dataset, fontsize=9)
    axes[0][0].set_ylabel("test Dice (tiled, eval mode), one point per seed")
    axes[0][0].legend(fontsize=7, loc="lower left")
    figure.suptitle("Accuracy vs tile mismatch per dataset (○ 2D U-Net, △ ViT, □ 3D U-Net)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _ted_vs_batch(rows: Sequence[Row], path: Path) -> bool:
    grid = _done(rows, "grid")
    datasets = sorted({r["dataset"] for r in grid})
    if not grid or len({r["batch_size"] for r in grid}) < 2:
        return False
    plt = pyplot()
    figure, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.4), squeeze=False, sharey=True)
    for axis, dataset in zip(axes[0], datasets):
        for norm in sorted({r["norm"] for r in grid}, key=_norm_key):
            selected = [r for r in grid if r["dataset"] == dataset and r["norm"] == norm]
            points = [(batch, value) for batch in sorted({r["batch_size"] for r in selected})
                      if (value := estimate([r for r in selected if r["batch_size"] == batch], "ted_dice"))]
            if points:
                values = [v for _, v in points]
                axis.errorbar([b for b, _ in points], [v.mean for v in values], capsize=3, marker="o",
                              yerr=[[v.mean - v.low for v in values], [v.high - v.mean for v in values]],
                              color=NORM_COLOURS.get(norm, "black"), label=NORM_LABELS.get(norm, norm))
        axis.set_xscale("log", base=2)
        sizes = sorted({r["batch_size"] for r in grid})
        axis.set_xticks(sizes, [str(b) for b in sizes])
        axis.set_title(dataset, fontsize=9)
        axis.set_xlabel("training batch size")
    axes[0][0].set_ylabel("TED_dice (mean, 95 % seed-level interval)")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _example(run_dirs: dict[str, Path], name: str) -> dict[str, np.ndarray] | None:
    directory = run_dirs.get(name)
    if directory is None or not (directory / "example.npz").exists():
        return None
    with np.load(directory / "example.npz") as data:
        return {k: data[k] for k in data.files}


def _seams_pair(rows: Sequence[Row], run_dirs: dict[str, Path]) -> tuple[Row, Row] | None:
    """Return an InstanceNorm run and a global-statistics run (BatchRenorm first) of one dataset and batch size."""
    grid = [r for r in _done(rows, "grid") if r["name"] in run_dirs and (run_dirs[r["name"]] / "example.npz").exists()]
    for seamless in ("batchrenorm", "batch", "instance_tracked", "none"):
        for dataset in sorted({r["dataset"] for r in grid}):
            for batch in sorted({r["batch_size"] for r in grid}, reverse=True):
                found = [next((r for r in grid if r["dataset"] == dataset and r["batch_size"] == batch
                               and r["norm"] == norm), None) for norm in ("instance", seamless)]
                if found[0] is not None and found[1] is not None:
                    return found[0], found[1]
    return None


def _side_by_side(rows: Sequence[Row], run_dirs: dict[str, Path], path: Path) -> tuple[Row, Row] | None:
    pair = _seams_pair(rows, run_dirs)
    if pair is None:
        return None
    plt = pyplot()
    examples = [_example(run_dirs, r["name"]) for r in pair]
    first = examples[0]
    assert first is not None
    image = first["image"]
    core = [int(c) for c in first["core"]]
    size = [min(n, max(6 * c, 384) // c * c) for n, c in zip(image.shape[-2:], core[-2:])]
    window = (slice(0, size[0]), slice(0, size[1]))
    middle = image.shape[0] // 2 if image.ndim == 3 else None
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.6))

    def plane(array: np.ndarray) -> np.ndarray:
        return np.asarray(array[middle] if middle is not None else array, dtype=np.float32)[window]

    axes[0].imshow(plane(image), cmap="gray")
    axes[0].set_title(f"{pair[0]['dataset']} test image", fontsize=9)
    for axis, row, example in zip(axes[1:], pair, examples):
        assert example is not None
        axis.imshow(plane(example["prediction"]), cmap="magma", vmin=0, vmax=1)
        axis.set_title(f"{NORM_LABELS[row['norm']]} (batch {row['batch_size']}): TM_dice "
                       f"{format_value(row['tm_dice_small'])}, seam score "
                       f"{format_value(row['seam_score_small'], 2)}", fontsize=9)
    for axis in axes:
        # seams marked outside the image only: lines drawn over the prediction would hide the seams themselves
        axis.set_yticks([k * core[-2] - 0.5 for k in range(1, size[0] // core[-2] + 1)])
        axis.set_xticks([k * core[-1] - 0.5 for k in range(1, size[1] // core[-1] + 1)])
        axis.tick_params(length=6, color="cyan", labelleft=False, labelbottom=False, width=1.5)
    figure.suptitle(f"The same region predicted with small tiles (core {core[-2]}×{core[-1]}; ticks: tile borders)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return pair


def _claims_section(rows: Sequence[Row]) -> str:
    checks = check_claims(rows)
    lines = [[c.claim, f"**{c.verdict}**", c.evidence] for c in checks]
    return markdown_table(("claim of the paper", "here", "evidence"), lines)


def _budget_note(profile: str, hardware: Hardware) -> str:
    """What the page's training budget can and cannot show, when it is not the paper-like ``full`` profile."""
    if profile == "full":
        return ""
    where = "a CPU" if hardware.device == "cpu" else hardware.device
    return (f"\n\nThis page is the **{profile}** profile: small networks trained briefly on {where}. "
            "The paper-like budgets are the `full` profile (`seamfree study --profile full --device cuda`), "
            "which has not been run for this page.")


PARTS = {"grid": "the 2D grid", "vit": "the ViT rows", "volume": "the 3D rows", "transfer": "the transfer"}


def _scope_note(rows: Sequence[Row]) -> str:
    """Which parts of the study the page leaves out (a page of the runs ``--only`` selected), so that a claim
    read "not measured" is not taken for a claim the study cannot measure."""
    present = {str(r["name"]).split("/", 1)[0] for r in rows}
    left_out = [label for part, label in PARTS.items() if part not in present]
    if not left_out:
        return ""
    listed = left_out[0] if len(left_out) == 1 else ", ".join(left_out[:-1]) + " and " + left_out[-1]
    return (f"\n\nThis page leaves out {listed} (not among its runs): the claims "
            "resting on them read \"not measured\" here, whatever other pages show.")


def _status_section(rows: Sequence[Row]) -> str:
    failed = [r for r in rows if r["status"] == "failed"]
    missing = [r for r in rows if r["status"] not in ("done", "failed")]
    done = [r for r in rows if r["status"] == "done"]
    text = f"{len(done)} of {len(rows)} runs finished"
    if failed:
        text += "; failed: " + "; ".join(f"`{r['name']}` ({r['error']})" for r in failed)
    if missing:
        text += f"; not run: {len(missing)} (" + ", ".join(f"`{r['name']}`" for r in missing[:10])
        text += ", …)" if len(missing) > 10 else ")"
    return text + "."


def write_results(rows: Sequence[Row], path: str | Path, *, run_dirs: dict[str, Path], command: str,
                  profile: str, hardware: Hardware, transfer: TransferConfig | None = None) -> Path:
    """Write the study's Markdown page to ``path`` (figures in ``figures/`` beside it); return the path.

    Parameters
    ----------
    rows : sequence of dict
        The study table (:func:`seamfree.study.runner.read_rows` or ``StudyResult.rows``).
    path : str or Path
        The Markdown file to write, e.g. ``docs/results.md``.
    run_dirs : dict
        Run name → its directory (for the side-by-side figure's predictions).
    command : str
        The command that regenerates the page.
    profile : str
        The study profile the rows come from.
    hardware : Hardware
    transfer : TransferConfig, optional
        The study's transfer settings, stated in the transfer section (adaptation budget, augmentation).
    """
    page = Path(path)
    _check_replaceable(page)
    figures = page.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["status"] == "done"]
    compute = sum((r.get("train_seconds") or 0) + (r.get("eval_seconds") or 0) for r in done)
    parts = [
        TITLE,
        f"Generated by `{command}` (profile **{profile}**) on {datetime.now(UTC):%Y-%m-%d}.\n\n"
        f"Hardware: {hardware.describe()}. Compute: {compute / 3600:.2f} h of training and evaluation "
        f"over {len(done)} runs. {_status_section(rows)}" + _scope_note(rows) + _budget_note(profile, hardware),
        "How to read it: every model is trained with the same recipe except its normalization and training batch "
        "size, then measured on held-out test images with `seamfree.diagnose`: Dice of the tiled eval-mode "
        "prediction; tile mismatch TM (two tilings shifted by half a tile, compared away from tile borders); "
        "train/eval disparity TED and ΔDice = Dice(train-mode normalization) − Dice(eval mode) on training-like "
        "batches; seam score (≈ 1 is seamless); and the same with small tiles (half the training patch). "
        "Definitions: PAPER.md and docs/diagnose.md. The full table is `study.csv` in the study's output folder.",
        statistics_note(),
        "## The paper's claims on this data\n\n" + _claims_section(rows),
        "## In-distribution: 2D U-Net grid\n\n" + _grid_section(rows),
    ]
    for title, section in (("Train/eval disparity: training batch × measurement batch", ted_table_section(rows)),
                           ("The blending arm: Gaussian blending against crop stitching", blending_section(rows)),
                           ("The equal-samples arm: batch 1 at 8× the iterations", equal_samples_section(rows)),
                           ("Instance-level damage and the seed-to-seed noise floor",
                            instance_noise_section(rows, run_dirs)),
                           ("The seam test on held-out models", seam_test_section(rows))):
        if section:
            parts.append(f"## {title}\n\n{section}")
    vit = _done(rows, "vit")
    if vit:
        parts.append("## ViT-based (UNETR-like) models\n\nSelf-attention spans the whole tile, so every ViT is "
                     "tile-dependent whatever its decoder norm; the norms still decide TED.\n\n"
                     + markdown_table(IN_DISTRIBUTION, _in_distribution_lines(vit)))
    volume = _done(rows, "volume")
    if volume:
        parts.append("## 3D: anisotropic U-Net on the drosophila-vnc stack\n\n"
                     + markdown_table(IN_DISTRIBUTION, _in_distribution_lines(volume)))
    parts.append("## Transfer to a new domain\n\n" + transfer_section(rows, figures, transfer))
    figure_lines = []
    if _dice_vs_tm(rows, figures / "dice_vs_tm.png"):
        figure_lines.append("![Dice vs tile mismatch](figures/dice_vs_tm.png)")
    if _ted_vs_batch(rows, figures / "ted_vs_batch.png"):
        figure_lines.append("![TED vs training batch size](figures/ted_vs_batch.png)")
    pair = _side_by_side(rows, run_dirs, figures / "seams.png")
    if pair is not None:
        names = f"{NORM_LABELS[pair[0]['norm']]} vs {NORM_LABELS[pair[1]['norm']]}"
        figure_lines.append(f"![{pair[0]['dataset']}: {names} with small tiles](figures/seams.png)")
    parts.append("## Figures\n\n" + ("\n\n".join(figure_lines) or "No figure: no run has finished."))
    partial = page.with_name(page.name + ".partial")
    partial.write_text("\n\n".join(parts) + "\n")
    os.replace(partial, page)  # a reader never sees half a page
    return page


TITLE = "# seamfree study: normalization, tiling artifacts and train/eval disparity on real microscopy data"


def _check_replaceable(page: Path) -> None:
    """The results page replaces only a page seamfree wrote (its first line is the study's title)."""
    if page.is_dir():
        raise OutputExistsError(f"results page {str(page)!r} is a folder; pass a file path such as "
                                f"{str(page / 'results.md')!r}")
    if not page.exists():
        return
    with open(page, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace").rstrip("\n")
    if first != TITLE:
        raise OutputExistsError(f"results page {str(page)!r} exists and is not a page seamfree wrote (its first "
                                "line is not the study's title); choose another path with --results")
