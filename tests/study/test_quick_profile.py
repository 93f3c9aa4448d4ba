"""`seamfree study --profile quick` on the real datasets, end to end (slow: a few minutes on 2 CPU cores)."""

from __future__ import annotations

import pytest

from seamfree.cli.main import main
from seamfree.study import read_rows

pytestmark = pytest.mark.slow


def test_quick_profile_runs_every_part_of_the_study(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEAMFREE_DATA", str(data_dir))
    out = tmp_path / "study"
    assert main(["study", "--profile", "quick", "--out", str(out)]) == 0
    rows = read_rows(out / "study.csv")
    assert len(rows) == 38 and all(row["status"] == "done" for row in rows)
    assert {row["kind"] for row in rows} == {"grid", "vit", "volume", "zero-shot", "zero-shot-dataset",
                                            "recalibrate", "recalibrate-label-free", "finetune", "convert",
                                            "recalibrate-finetune", "scratch"}
    adapted = [r for r in rows if r["name"].startswith("transfer/")]
    assert len(adapted) == 26
    # every adaptation is measured on the same target test images, and the k-image runs say how many they used
    assert len({r["test"] for r in adapted}) == 1
    assert {r["images"] for r in adapted if "/k" in r["name"]} == {1, 2}
    # what holds by construction, whatever the accuracy of toy-scale models
    for row in rows:
        if row["kind"] in ("grid", "volume") and row["norm"] in ("batch", "batchrenorm"):
            assert row["tm_abs"] < 1e-5 and row["exact_max_abs"] < 1e-4, row["name"]
        if row["kind"] in ("grid", "volume") and row["norm"] == "instance":
            assert row["tm_abs"] > 1e-4 and row["ted_abs"] == 0.0, row["name"]
        assert 0.0 <= row["dice"] <= 1.0
    batch = [r for r in rows if r["kind"] == "grid" and r["norm"] == "batch"]
    assert all(r["ted_abs"] > 0 for r in batch)
    page = (out / "results.md").read_text()
    assert "seamfree study --profile quick" in page and "38 of 38 runs finished" in page
    for section in ("## The paper's claims on this data", "## ViT-based", "## 3D:", "## Transfer to a new domain",
                    "## Train/eval disparity: training batch × measurement batch",
                    "## The blending arm", "## Instance-level damage and the seed-to-seed noise floor",
                    "**Unit of every interval: the seed.**"):
        assert section in page
    renorm = [r for r in rows if r["kind"] == "grid" and r["norm"] == "batchrenorm"]
    assert all(0 <= r["clip_rate"] <= 1 for r in renorm)  # measured on its own training-like batches
    assert "### coelho2009-gnf → coelho2009-ic100" in page and "BatchRenorm − BatchNorm, fine-tuned" in page
    for figure in ("dice_vs_tm.png", "ted_vs_batch.png", "seams.png",
                   "transfer_coelho2009-gnf-to-coelho2009-ic100.png"):
        assert (out / "figures" / figure).exists()
    capsys.readouterr()
    # a second invocation is served from the cache
    assert main(["study", "--profile", "quick", "--out", str(out)]) == 0
    assert "0 run(s) trained and measured, 38 from the cache" in capsys.readouterr().out
