"""The results page's transfer section from a table of transfer rows: Dice per norm, stage and k with intervals,
paired differences at each k, and the Dice-vs-k figure."""

from __future__ import annotations

import pytest

from seamfree.study.config import TransferConfig
from seamfree.study.transfer_report import transfer_section

PAIR = "transfer/src-to-tgt"
IMAGES = [0.2, 0.4, 0.6, 0.8]


def adapted(norm, kind, gain, seed, k=None, batch=8):
    dice = [v + gain for v in IMAGES]
    stage = {"zero-shot": "zero-shot", "zero-shot-dataset": "zero-shot"}.get(kind, f"k{k}/{kind}")
    return {"name": f"{PAIR}/unet-{norm}-b{batch}-s{seed}/{stage}", "kind": kind, "status": "done", "norm": norm,
            "dataset": "src", "test": "tgt", "batch_size": batch, "seed": seed, "images": k,
            "dice": sum(dice) / len(dice), "dice_images": dice, "msa": 0.3, "msa_images": [0.2, 0.4, 0.3, 0.3]}


def scratch(norm, gain, seed, k):
    row = adapted(norm, "scratch", gain, seed, k, batch=2)
    return {**row, "name": f"{PAIR}/unet-{norm}-scratch-s{seed}/k{k}", "dataset": "tgt"}


@pytest.fixture
def rows():
    out = []
    for seed in range(3):
        for norm, bonus in (("batch", 0.0), ("batchrenorm", 0.05), ("instance", 0.02)):
            out += [adapted(norm, "zero-shot", bonus - 0.1, seed),
                    adapted(norm, "zero-shot-dataset", bonus - 0.08, seed)]
            for k in (1, 4):
                out.append(adapted(norm, "finetune", bonus + 0.01 * k, seed, k))
                out.append(scratch(norm, -0.15, seed, k))
    # a failed run and a grid row: neither belongs in the section
    out.append({**adapted("batch", "finetune", 0.0, 9, 1), "status": "failed", "dice": None})
    out.append({"name": "grid/src/unet-batch-b8-s0", "kind": "grid", "status": "done", "dice": 0.9})
    return out


def test_the_section_tabulates_every_stage_with_intervals_and_pairs_norms_at_each_k(rows, tmp_path):
    text = transfer_section(rows, tmp_path, TransferConfig(enabled=True, augment={"background": 0.3}))
    assert "### src → tgt" in text and "| norm | source batch | stage | k=0 | k=1 | k=4 |" in text
    # BatchNorm fine-tuned with one image: IMAGES + 0.01 pooled over 3 seeds, mean 0.51
    assert "| BatchNorm | 8 | fine-tuned | – | 0.510 [" in text
    assert "| BatchRenorm | – | trained from scratch on the k images | – | 0.350 [" in text
    # paired image by image on the same seed and k: the differences are exact, not the spread of images
    # (seed-level intervals, each seed's mean after ·)
    seeds = " · +0.05 +0.05 +0.05 higher"
    assert f"| BatchRenorm − BatchNorm, fine-tuned | – | +0.050 [+0.050, +0.050]{seeds} | +0.050 [+0.050, +0.050]" \
           f"{seeds} |" in text
    assert "| BatchRenorm − InstanceNorm, zero-shot, per-image normalization | +0.030 [+0.030, +0.030] · " in text
    assert "| BatchNorm: fine-tuned − from scratch | – | +0.160 [+0.160, +0.160] · +0.16 +0.16 +0.16 higher | " \
           "+0.190" in text
    assert "| BatchNorm: zero-shot, dataset-level − per-image normalization | +0.020 [+0.020, +0.020] · " in text
    # the protocol says how images were normalized and augmented
    assert "percentiles 1 and 99.8" in text and "background 0.3" in text and "seeds [0, 1, 2]" in text
    assert (tmp_path / "transfer_src-to-tgt.png").stat().st_size > 10_000
    assert "figures/transfer_src-to-tgt.png" in text


def test_without_transfer_rows_the_section_says_so(tmp_path):
    assert transfer_section([], tmp_path) == "No transfer run has finished."
