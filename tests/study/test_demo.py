"""`seamfree demo` end to end (a fast setting): the report exists, renders, and shows the expected contrast."""

from __future__ import annotations

import json

import pytest

from seamfree.cli.main import main
from seamfree.diagnostics.report import check_rendering, find_chromium

pytestmark = pytest.mark.integration  # end to end: runs in CI, not in the inner loop


def test_demo_writes_a_report_contrasting_instance_norm_and_batch_renorm(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--iterations", "60", "--image-size", "512", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "report:" in out and "InstanceNorm" in out
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    instance, renorm = data["diagnoses"]
    assert instance["name"].startswith("instance") and renorm["name"].startswith("batchrenorm")
    assert instance["tile_mismatch"]["tm_dice"] > 1e-3 and instance["recommendation"]["verdict"] == "tiling artifacts"
    assert renorm["tile_mismatch"]["tm_abs"] < 1e-6 and renorm["exactness"]["exact"]
    assert instance["train_eval_disparity"]["ted_abs"] == 0.0
    # the exact model's seams: compared with grid B at the same places, nothing at all
    assert renorm["seams"]["paired"] and renorm["seams"]["detected"] is False and renorm["seams"]["z"] == 0
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the JSON checks passed")
    seen = check_rendering(tmp_path / "report" / "report.html", tmp_path / "shot.png")
    assert seen.figures_loaded and seen.figure_count == 19 and seen.nonblank_fraction > 0.05
