"""The transfer part of the results page: per source → target pair, a table of Dice by norm, stage and number k
of target images (mean and 95 % seed-level bootstrap interval, the seed being the unit), paired differences between
norms at each k, and a Dice-vs-k figure.

Rows come from :func:`seamfree.study.runs.plan_runs`'s transfer runs, named ``transfer/<pair>/…``; k = 0 is the
source model unchanged (zero-shot).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seamfree.layers.registry import display_order, norm_spec
from seamfree.study.config import TransferConfig
from seamfree.study.page import estimate, interval, markdown_table, pyplot
from seamfree.study.statistics import compare, paired_difference
from seamfree.study.values import paired_values

__all__ = ["STAGES", "transfer_section"]

Row = dict[str, Any]

# row kind → what was done to the source model, in the order the tables list them
STAGES = {"zero-shot": "zero-shot, per-image normalization", "zero-shot-dataset": "zero-shot, dataset-level "
          "normalization", "recalibrate": "recalibrated (patches placed with the labels)",
          "recalibrate-label-free": "recalibrated without labels (uniform patches)", "finetune": "fine-tuned",
          "convert": "converted to BatchRenorm, fine-tuned", "recalibrate-finetune": "recalibrated, fine-tuned",
          "scratch": "trained from scratch on the k images"}
ZERO_SHOT = ("zero-shot", "zero-shot-dataset")
# the differences a reader of the study asks for: does BatchRenorm transfer better than the norms it replaces?
COMPARISONS = (("batchrenorm", "batch"), ("batchrenorm", "instance"))


def _pair_label(row: Row) -> str:
    return str(row["name"]).split("/")[1]


def _transfer_rows(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if str(r.get("name", "")).startswith("transfer/") and r.get("kind") in STAGES
            and r.get("status") == "done" and r.get("dice") is not None]


def _k(row: Row) -> int:
    return 0 if row["kind"] in ZERO_SHOT else int(row["images"])


def _groups(rows: Sequence[Row]) -> list[tuple[str, Any, str]]:
    """(norm, source batch size or None for scratch, kind) in display order."""
    keys = {(r["norm"], None if r["kind"] == "scratch" else r["batch_size"], r["kind"]) for r in rows}
    order = list(STAGES)
    return sorted(keys, key=lambda g: (display_order(g[0]), g[1] is None, g[1] or 0, order.index(g[2])))


def _select(rows: Sequence[Row], norm: str, batch: Any, kind: str, k: int | None = None) -> list[Row]:
    return [r for r in rows if r["norm"] == norm and r["kind"] == kind
            and (kind == "scratch" or r["batch_size"] == batch) and (k is None or _k(r) == k)]


def _metric_table(rows: Sequence[Row], ks: Sequence[int], key: str = "dice") -> str:
    lines = []
    for norm, batch, kind in _groups(rows):
        cells = [interval(estimate(_select(rows, norm, batch, kind, k), key)) for k in ks]
        lines.append([norm_spec(norm).label, "–" if batch is None else str(batch), STAGES[kind], *cells])
    return markdown_table(("norm", "source batch", "stage", *(f"k={k}" for k in ks)), lines)


def _scratch_peer(row: Row) -> Row:
    """A from-scratch row as the peer of an adapted row: it pairs with every source batch size and source dataset
    of the same seed, k and test images."""
    return {**row, "dataset": None, "batch_size": None}


def _differences(rows: Sequence[Row], ks: Sequence[int]) -> str:
    lines = []

    def add(label: str, a: Sequence[Row], b: Sequence[Row]) -> None:
        cells, seen = [], False
        for k in ks:
            x, y, units = paired_values([r for r in a if _k(r) == k], [r for r in b if _k(r) == k], "dice")
            if x:
                d = paired_difference(x, y, units=units)
                cells.append(f"{interval(d, signed=True)} {compare(d)}")
                seen = True
            else:
                cells.append("–")
        if seen:
            lines.append([label, *cells])

    for kind in ("zero-shot", "finetune"):
        for a_norm, b_norm in COMPARISONS:
            add(f"{norm_spec(a_norm).label} − {norm_spec(b_norm).label}, {STAGES[kind]}",
                [r for r in rows if r["norm"] == a_norm and r["kind"] == kind],
                [r for r in rows if r["norm"] == b_norm and r["kind"] == kind])
    for norm in sorted({r["norm"] for r in rows}, key=display_order):
        add(f"{norm_spec(norm).label}: fine-tuned − from scratch",
            [{**r, "dataset": None} for r in rows if r["norm"] == norm and r["kind"] == "finetune"],
            [_scratch_peer(r) for r in rows if r["norm"] == norm and r["kind"] == "scratch"])
        add(f"{norm_spec(norm).label}: zero-shot, dataset-level − per-image normalization",
            [r for r in rows if r["norm"] == norm and r["kind"] == "zero-shot-dataset"],
            [r for r in rows if r["norm"] == norm and r["kind"] == "zero-shot"])
    if not lines:
        return ""
    return ("Paired differences of Dice, image by image on the same test images, seeds, source batch size and k "
            "target images (95 % two-stage bootstrap interval that resamples seeds, then images within seeds; the "
            "mean of each seed after ·; higher/lower when the interval excludes 0, else inconclusive):\n\n"
            + markdown_table(("difference", *(f"k={k}" for k in ks)), lines))


def _figure(rows: Sequence[Row], ks: Sequence[int], path: Path, title: str) -> bool:
    norms = sorted({r["norm"] for r in rows}, key=display_order)
    batches = sorted({r["batch_size"] for r in rows if r["kind"] != "scratch"})
    if not norms or not batches:
        return False
    plt = pyplot()
    legend_height = 0.9  # inches below the panels for the shared legend
    height = 3.0 * len(batches) + legend_height
    figure, axes = plt.subplots(len(batches), len(norms), figsize=(max(8.0, 3.6 * len(norms)), height),
                                squeeze=False, sharey=True)
    positions = {k: i for i, k in enumerate(ks)}
    styles = {"zero-shot": ("o", "-"), "zero-shot-dataset": ("D", "-"), "recalibrate": ("s", "--"),
              "recalibrate-label-free": ("s", ":"),
              "finetune": ("o", "-"), "convert": ("^", "-."), "recalibrate-finetune": ("v", ":"),
              "scratch": ("x", "--")}
    colours = {"zero-shot": "black", "zero-shot-dataset": "#7f7f7f", "recalibrate": "#1f77b4",
               "recalibrate-label-free": "#17becf", "finetune": "#2ca02c",
               "convert": "#9467bd", "recalibrate-finetune": "#ff7f0e", "scratch": "#d62728"}
    for row_axes, batch in zip(axes, batches):
        for axis, norm in zip(row_axes, norms):
            for index, (kind, (marker, line)) in enumerate(styles.items()):
                dodge = 0.05 * (index - len(styles) / 2)  # side by side, so equal values stay visible
                points = []
                for k in ks:
                    value = estimate(_select(rows, norm, batch, kind, k))
                    if value is not None:
                        points.append((positions[k], value))
                if not points:
                    continue
                x = [p + dodge for p, _ in points]
                mean = [e.mean for _, e in points]
                error = [[e.mean - e.low for _, e in points], [e.high - e.mean for _, e in points]]
                axis.errorbar(x, mean, yerr=error, marker=marker, ls=line, capsize=3, lw=1.2, ms=5,
                              color=colours[kind], label=STAGES[kind])
            axis.set_xticks(range(len(ks)), [str(k) for k in ks])
            axis.set_title(f"{norm_spec(norm).label}, source batch {batch}", fontsize=9)
            axis.set_xlabel("target training images k (0: zero-shot)")
        row_axes[0].set_ylabel("target test Dice")
    handles: dict[str, Any] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _protocol(config: TransferConfig | None, rows: Sequence[Row]) -> str:
    tests = sorted({len(r.get("dice_images") or []) for r in rows} - {0})
    seeds = sorted({r["seed"] for r in rows})
    text = (f"Each cell: mean Dice of the exact tiled eval-mode prediction on the target's test images "
            f"({'/'.join(map(str, tests)) or '?'} images) over seeds {seeds}, with its 95 % bootstrap "
            "interval whose unit is the seed (seeds resampled, then the images of each seed), and each seed's "
            "mean after ·. k = 0 is the source model unchanged (zero-shot); for k ≥ 1 "
            "the k target training images are a random subset per seed, nested as k grows, and no test image is "
            "among them. Intensity normalization: every image is mapped by its own percentiles 1 and 99.8 to "
            "[0, 1], in training and at test time; the row 'dataset-level normalization' maps every test image by "
            "the percentiles of all test images pooled instead.")
    if config is not None:
        augment = ("the recipe's training.augment with " + ", ".join(f"{k} {v}" for k, v in sorted(
            config.augment.items()))) if config.augment else "the recipe's training.augment"
        scratch = config.scratch_iterations or "the recipe's training.iterations"
        text += (f" Adaptation: {config.finetune_iterations} fine-tuning iterations at batch "
                 f"{config.finetune_batch_size}, learning rate {config.finetune_learning_rate:g}; recalibration "
                 f"on {config.recalibration_batches} batches of 8 patches of the k images; from scratch: "
                 f"{scratch} iterations. Intensity augmentation of every "
                 f"transfer training (set a priori, never tuned on a target): {augment}.")
    return text


def transfer_section(rows: Sequence[Row], figures: Path, config: TransferConfig | None = None) -> str:
    """The transfer section's Markdown (figures written to ``figures/transfer_<pair>.png``)."""
    selected = _transfer_rows(rows)
    if not selected:
        return "No transfer run has finished."
    parts = [_protocol(config, selected)]
    for pair in sorted({_pair_label(r) for r in selected}):
        chosen = [r for r in selected if _pair_label(r) == pair]
        ks = sorted({_k(r) for r in chosen})
        source = next((r["dataset"] for r in chosen if r["kind"] != "scratch"), "?")
        parts.append(f"### {source} → {chosen[0]['test']}\n\nDice:\n\n{_metric_table(chosen, ks)}")
        if any(r.get("msa") is not None for r in chosen):
            parts.append("Mean segmentation accuracy (mSA: TP / (TP + FP + FN) of objects matched one to one, "
                         "averaged over IoU thresholds 0.5–0.95; objects are the connected components of the "
                         "thresholded prediction, for membranes those of the regions between them):\n\n"
                         + _metric_table(chosen, ks, "msa"))
        differences = _differences(chosen, ks)
        if differences:
            parts.append(differences)
        name = f"transfer_{pair}.png"
        if _figure(chosen, ks, figures / name, f"{source} → {chosen[0]['test']}"):
            parts.append(f"![Dice vs k, {source} → {chosen[0]['test']}](figures/{name})")
    return "\n\n".join(parts)
