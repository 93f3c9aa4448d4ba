"""`seamfree study`: configuration, run planning and hashing, caching and resume, claims, results page, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from seamfree.cli.main import main
from seamfree.errors import ConfigError
from seamfree.study import (
    check_claims,
    load_study_config,
    plan_runs,
    read_rows,
    run_study,
    select_runs,
)
from seamfree.study.runner import COLUMNS, model_directories

pytestmark = pytest.mark.integration  # end to end: runs in CI, not in the inner loop

TINY = {
    "grid": {"datasets": [{"name": "synthetic"}], "norms": ["batch", "instance"], "batch_sizes": [1, 2]},
    "training": {"iterations": 12, "patch_size": [64, 64], "features": 4, "checkpoint_every": 4},
    "evaluation": {"test_images": 1, "core": 128, "ted_batches": 1},
    "vit": {"dataset": None},
    "volume": {"enabled": False},
    "transfer": {"enabled": False},
}


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_profiles_plan_the_whole_grid_with_sources_first():
    standard = plan_runs(load_study_config(profile="standard"))
    names = [run.name for run in standard]
    assert len(names) == len(set(names))
    grid = [run for run in standard if run.kind == "grid"]
    # 4 dataset/targets x 6 norms x batch sizes {1, 8} x 3 seeds (intervals over seeds)
    assert len(grid) == 144 and {run.labels["batch_size"] for run in grid} == {1, 8}
    assert {run.labels["seed"] for run in grid} == {0, 1, 2}
    assert {run.labels["norm"] for run in standard if run.kind == "vit"} == {"batch", "batchrenorm", "layer"}
    assert {run.labels["norm"] for run in standard if run.kind == "volume"} >= {"batch", "batchrenorm", "instance"}
    for index, run in enumerate(standard):
        if run.source is not None:
            assert run.source in names[:index]
    kinds = {run.kind for run in standard}
    assert kinds == {"grid", "vit", "volume", "transfer-source", "zero-shot", "zero-shot-dataset", "finetune",
                     "recalibrate-label-free", "equal-samples",
                     "convert", "recalibrate", "recalibrate-finetune", "scratch"}
    # the transfer protocol: k in {1, 2, 4, 8} target images, 3 seeds, two pairs, sources at batch 2 and 8
    tuned = [run for run in standard if run.kind == "finetune"]
    assert {run.labels["images"] for run in tuned} == {1, 2, 4, 8}
    assert {run.labels["seed"] for run in tuned} == {0, 1, 2}
    assert {run.labels["batch_size"] for run in tuned} == {2, 8}
    assert {run.labels["test"] for run in tuned} == {"coelho2009-ic100", "drosophila-vnc-membranes"}
    full = plan_runs(load_study_config(profile="full"))
    assert {run.labels["batch_size"] for run in full if run.kind == "grid"} == {1, 2, 8}
    assert {run.labels["seed"] for run in full if run.kind == "grid"} == {0, 1, 2, 3, 4}


def test_digest_changes_with_what_decides_the_result_only():
    config = load_study_config(profile="quick")
    same = load_study_config(profile="quick", overrides=["device=cuda", "threads=4"])
    other = load_study_config(profile="quick", overrides=["training.iterations=61"])
    digests = {run.name: run.digest() for run in plan_runs(config)}
    assert digests == {run.name: run.digest() for run in plan_runs(same)}
    changed = {run.name for run in plan_runs(other) if run.digest() != digests[run.name]}
    assert {name for name in changed if name.startswith("grid/")} == {n for n in digests if n.startswith("grid/")}
    assert not any(name.startswith(("vit/", "volume/")) for name in changed)


def test_only_selects_runs_with_the_runs_they_start_from():
    runs = plan_runs(load_study_config(profile="quick"))
    chosen = select_runs(runs, ["transfer/*/unet-batch-b*/k1/recalibrate-finetune"])
    assert [run.kind for run in chosen] == ["grid", "recalibrate", "recalibrate-finetune"]
    with pytest.raises(ConfigError, match="no run matches"):
        select_runs(runs, ["nothing/*"])


def test_bad_configuration_is_rejected_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match="unknown study profile 'quik'"):
        load_study_config(profile="quik")
    with pytest.raises(ConfigError, match="did you mean 'norms'"):
        load_study_config(profile="quick", overrides=["grid.norm=[batch]"])
    with pytest.raises(ConfigError, match="unknown normalization"):
        load_study_config(profile="quick", overrides=["grid.norms=[batchnorm]"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_config(tmp_path / "missing.yaml")


def test_study_runs_caches_and_resumes(tiny_config, tmp_path):
    config = load_study_config(tiny_config)
    out = tmp_path / "study"
    first = run_study(config, out, only=["grid/synthetic/unet-batch-b1-*"])
    assert first.ran == ["grid/synthetic/unet-batch-b1-s0"] and not first.failed
    rows = read_rows(first.table)
    assert [row["status"] for row in rows] == ["done", "missing", "missing", "missing"]
    assert list(rows[0]) == list(COLUMNS)
    # an interrupted run: its training stopped after the first checkpoint; the rerun resumes it
    interrupted = model_directories(config, out)["grid/synthetic/unet-instance-b2-s0"] / "train"
    # (trained directly: a finished study prunes the resumable state, which an interrupted one still has)
    from seamfree.training.config import load_config
    from seamfree.training.loop import train

    run = next(r for r in plan_runs(config) if r.name == "grid/synthetic/unet-instance-b2-s0")
    mapping = {**run.train, "output": str(interrupted)}
    mapping["training"] = {**mapping["training"], "iterations": 4}
    train(load_config(base=mapping))
    assert (interrupted / "state.pt").exists()
    second = run_study(config, out)
    assert second.cached == ["grid/synthetic/unet-batch-b1-s0"] and len(second.ran) == 3
    log = (interrupted / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, 13))
    rows = read_rows(second.table)
    assert all(row["status"] == "done" for row in rows)
    instance = next(r for r in rows if r["norm"] == "instance" and r["batch_size"] == 2)
    batch = next(r for r in rows if r["norm"] == "batch" and r["batch_size"] == 2)
    # the paper's pattern, even after a few steps: per-tile statistics mismatch, running statistics do not
    assert instance["tm_abs"] > 1e-4 and instance["ted_abs"] == 0.0
    assert batch["tm_abs"] < 1e-6 and batch["exact_max_abs"] < 1e-5 and batch["ted_abs"] > 0
    assert 0 <= batch["dice"] <= 1 and batch["dice_small"] is not None
    third = run_study(config, out)
    assert third.ran == [] and len(third.cached) == 4


def test_a_failing_run_is_recorded_and_the_study_goes_on(tiny_config, tmp_path):
    config = load_study_config(tiny_config, overrides=["training.learning_rate=1.0e+30"])
    result = run_study(config, tmp_path / "study", only=["grid/synthetic/unet-batch-b1-*",
                                                        "grid/synthetic/unet-instance-b1-*"])
    assert len(result.failed) == 2
    rows = read_rows(result.table)
    assert {row["status"] for row in rows} == {"failed", "missing"}
    assert "learning_rate" in next(r for r in rows if r["status"] == "failed")["error"]


def test_claims_read_the_table():
    def row(kind, norm, batch, seed, **metrics):
        base = {"status": "done", "kind": kind, "norm": norm, "batch_size": batch, "dataset": "d", "seed": seed,
                "stage": "in-distribution", "dice": 0.9, "dice_small": 0.9, "tm_dice": 0.0, "tm_abs": 0.0,
                "tm_abs_small": 0.0, "ted_dice": 0.0, "ted_abs": 0.0, "delta_dice": 0.0, "exact_max_abs": 0.0}
        row = {**base, **metrics}
        # three test images around the row's mean, the same spread for every model
        return {**row, "dice_images": [row["dice"] + e for e in (-0.01, 0.0, 0.01)],
                "ted_dice_images": [max(row["ted_dice"] + e, 0.0) for e in (-0.001, 0.0, 0.001)]}

    rows = []
    for seed in range(3):
        rows += [row("grid", "instance", 1, seed, tm_abs=0.01, tm_dice=0.05, tm_abs_small=0.03, dice_small=0.8),
                 row("grid", "instance", 8, seed, tm_abs=0.01, tm_dice=0.04, tm_abs_small=0.02, dice_small=0.85),
                 row("grid", "batch", 1, seed, ted_dice=0.3, ted_abs=0.1, delta_dice=0.2, dice=0.6),
                 row("grid", "batch", 8, seed, ted_dice=0.05, ted_abs=0.02, delta_dice=0.01),
                 row("grid", "batchrenorm", 1, seed, ted_dice=0.01, ted_abs=0.001),
                 row("grid", "batchrenorm", 8, seed, ted_dice=0.005, ted_abs=0.001)]
    checks = {c.claim: c for c in check_claims(rows)}
    verdicts = {claim: c.verdict for claim, c in checks.items()}
    assert verdicts["Tile-wise norms (InstanceNorm, GroupNorm, LayerNorm) cause tiling artifacts"] == "reproduced"
    assert verdicts["BatchNorm has a train/eval disparity that grows as the training batch shrinks"] == "reproduced"
    assert "d: b1 0.300 − b8 0.050 = 0.250 [0.250, 0.250] (n=9 in 3 seeds; seed means 0.250, 0.250, 0.250)" in \
        checks["BatchNorm has a train/eval disparity that grows as the training batch shrinks"].evidence
    assert verdicts["BatchRenorm removes the train/eval disparity, even with small batches"] == "reproduced"
    # BatchRenorm 0.9 at both batch sizes; the best peer is InstanceNorm at 0.9 (b1) and BatchNorm at 0.9 (b8)
    assert verdicts["BatchRenorm keeps the accuracy"] == "reproduced"
    assert verdicts["Tiling artifacts grow as tiles shrink"] == "reproduced"
    assert verdicts["BatchRenorm transfers best to a new dataset"] == "not measured"
    for r in rows:
        if r["norm"] == "instance" and r["batch_size"] == 1:
            r["tm_abs"] = 1e-7
    verdicts = {c.claim: c.verdict for c in check_claims(rows)}
    assert verdicts["Tile-wise norms (InstanceNorm, GroupNorm, LayerNorm) cause tiling artifacts"] == "partly"


def test_claims_never_count_a_missing_value_an_untrained_model_or_one_computation_twice():
    def row(norm, batch, **metrics):
        base = {"status": "done", "kind": "grid", "norm": norm, "batch_size": batch, "dataset": "d", "seed": 0,
                "stage": "in-distribution", "dice": 0.9, "tm_abs": 0.0, "exact_max_abs": 0.0, "ted_dice": 0.0,
                "ted_abs": 0.0, "name": f"{norm}-b{batch}"}
        return {**base, **metrics}

    exact = "Global statistics (BatchNorm, BatchRenorm in eval mode) make tiled prediction exact"
    # a model whose TM was never measured neither passes nor fails "exact tiling" (it used to pass as TM 0)
    checks = {c.claim: c for c in check_claims([row("batch", 8, tm_abs=None)])}
    assert checks[exact].verdict == "not measured"
    checks = {c.claim: c for c in check_claims([row("batch", 8, tm_abs=float("nan")), row("batchrenorm", 8)])}
    assert checks[exact].verdict == "reproduced" and checks[exact].evidence.startswith("1 of 1")
    # a model that never trained says nothing about its norm; tracked InstanceNorm at batch 1 is BatchNorm at 1
    rows = [row("none", 1, dice=0.002), row("batch", 1), row("instance_tracked", 1), row("instance_tracked", 8)]
    checks = {c.claim: c for c in check_claims(rows)}
    assert checks[exact].evidence.startswith("2 of 2")  # batch-b1 and instance_tracked-b8
    left_out = checks["Runs left out of every claim"].evidence
    assert "none-b1 (did not train: Dice 0.002)" in left_out
    assert "instance_tracked-b1 (the same computation as BatchNorm at batch size 1)" in left_out


def test_cli_runs_lists_and_writes_the_results_page(tiny_config, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", str(tiny_config), "--out", str(out), "--only", "grid/synthetic/*-b2-*"]) == 0
    printed = capsys.readouterr().out
    assert "2 run(s) trained and measured" in printed and "results:" in printed
    page = (out / "results.md").read_text()
    # the command that regenerates the page says which runs it selected; the page is of those runs
    assert (f"seamfree study {tiny_config} --profile quick --out {out} --only 'grid/synthetic/*-b2-*' "
            f"--results {out / 'results.md'}") in page
    assert "2 of 2 runs finished" in page
    assert "This page leaves out the ViT rows, the 3D rows and the transfer (not among its runs)" in page
    assert "## The paper's claims on this data" in page and "| InstanceNorm | 2 | 1 |" in page
    assert "This page is the **quick** profile" in page and "has not been run for this page" in page
    for figure in ("dice_vs_tm.png", "seams.png"):
        assert (out / "figures" / figure).stat().st_size > 10_000
    with np.load(next((out / "runs").glob("grid/synthetic/unet-instance-b2-*/example.npz"))) as example:
        assert example["prediction"].shape == example["image"].shape
    page_only = ["study", str(tiny_config), "--out", str(out), "--report-only", "--results", str(tmp_path / "r.md")]
    assert main(page_only) == 0
    assert "0 run(s) trained and measured" in capsys.readouterr().out
    assert "2 of 4 runs finished" in (tmp_path / "r.md").read_text()
    assert main(["study", str(tiny_config), "--out", str(out), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("done") for line in listing) == 2 and len(listing) == 4


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["study", "--profile", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown study profile 'huge'" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path), "--only", "nothing/*"]) == 2
    assert "no run matches" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEAMFREE_DATA", str(tmp_path / "empty"))
    assert main(["study", "--out", str(tmp_path / "out"), "--only", "grid/isbi2012/unet-batch-b1-*"]) == 2
    assert "seamfree data fetch isbi2012" in capsys.readouterr().err
