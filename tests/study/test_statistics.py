"""The study's confidence intervals and the verdicts built on them: a hand-computed bootstrap, the seed as the
experimental unit (a two-stage bootstrap), paired differences, the pre-registered protocol read from its file, and
verdict rules that give mirrored verdicts on mirrored data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from seamfree.errors import ConfigError
from seamfree.study import check_claims
from seamfree.study.protocol import decide, protocol
from seamfree.study.statistics import bootstrap_ci, compare, paired_difference

ROOT = Path(__file__).resolve().parents[2]
TRANSFER = "BatchRenorm transfers best to a new dataset"
RECALIBRATION = "Recalibrating BatchNorm statistics on target images is a cheap fix for a domain shift"
CONVERSION = "A trained BatchNorm model can be converted to BatchRenorm and fine-tuned"
DROP_SHIFT = "BatchNorm's accuracy drops in eval mode under domain shift"
DROP_INSIDE = "BatchNorm's accuracy drops in eval mode in distribution"
DISPARITY = "BatchNorm has a train/eval disparity that grows as the training batch shrinks"
REMOVES = "BatchRenorm removes the train/eval disparity, even with small batches"
KEEPS = "BatchRenorm keeps the accuracy"


def test_the_bootstrap_interval_of_a_hand_computed_case():
    # resampled means of [0, 0, 0, 1] are Binomial(4, 1/4) / 4: P(0) = 0.316, P(≤ 0.5) = 0.949, P(≤ 0.75) = 0.996,
    # so the 2.5th percentile is 0 and the 97.5th is 0.75
    estimate = bootstrap_ci([0.0, 0.0, 0.0, 1.0])
    assert (estimate.mean, estimate.low, estimate.high, estimate.count) == (0.25, 0.0, 0.75, 4)
    assert bootstrap_ci([0.3, 0.3, 0.3]).low == bootstrap_ci([0.3, 0.3, 0.3]).high == pytest.approx(0.3)
    assert bootstrap_ci([0.1, 0.5, 0.2, 0.9]) == bootstrap_ci([0.1, 0.5, 0.2, 0.9])  # seeded: reproducible
    with pytest.raises(ConfigError, match="finite values"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ConfigError, match="4 values, 3 units"):
        bootstrap_ci([0.1, 0.2, 0.3, 0.4], units=[0, 0, 1])


def test_the_seed_level_interval_includes_0_where_the_cell_level_one_does_not():
    # 3 seeds × 10 images; the seeds' models disagree (+0.10, −0.05, +0.02), the images of one seed barely do
    rng = np.random.default_rng(0)
    seeds = np.repeat([0, 1, 2], 10)
    b = rng.uniform(0.6, 0.8, 30)
    a = b + np.repeat([0.10, -0.05, 0.02], 10) + rng.normal(0, 0.003, 30)
    cells = paired_difference(list(a), list(b))
    by_seed = paired_difference(list(a), list(b), units=list(seeds))
    assert cells.low > 0 and compare(cells) == "higher"  # 30 "independent" cells: a spurious verdict
    assert by_seed.low < 0 < by_seed.high and compare(by_seed) == "inconclusive"
    assert by_seed.units == 3 and by_seed.count == 30
    assert by_seed.unit_means == pytest.approx((0.10, -0.05, 0.02), abs=0.003)
    assert "in 3 seeds; seed means +0.100, -0.047, +0.019" in str(by_seed)
    # every seed agreeing: the seed-level interval decides too
    agree = paired_difference(list(b + np.repeat([0.05, 0.06, 0.04], 10)), list(b), units=list(seeds))
    assert compare(agree) == "higher" and 0.035 < agree.low < agree.high < 0.065
    # two seeds are fewer than 3 units, whatever their images: inconclusive
    two = paired_difference([0.9] * 20, [0.1] * 20, units=[0] * 10 + [1] * 10)
    assert compare(two) == "inconclusive"


def test_paired_differences_remove_the_spread_between_images():
    # images differ widely, the method adds 0.05 to each: unpaired intervals overlap, the paired one excludes 0
    base = [0.1, 0.3, 0.5, 0.7, 0.9]
    better = [v + 0.05 for v in base]
    assert bootstrap_ci(better).overlaps(bootstrap_ci(base))
    difference = paired_difference(better, base)
    assert difference.low == pytest.approx(0.05) and compare(difference) == "higher"
    assert compare(paired_difference(base, better)) == "lower"
    assert compare(paired_difference([0.5, 0.6], [0.1, 0.2])) == "inconclusive"  # 2 pairs decide nothing
    with pytest.raises(ConfigError, match="one to one"):
        paired_difference([1.0], [1.0, 2.0])


def test_the_protocol_file_is_the_one_place_the_thresholds_live():
    # docs/protocol.md is the packaged protocol (a link), and the code reads its numbers
    assert (ROOT / "docs" / "protocol.md").resolve() == ROOT / "src" / "seamfree" / "study" / "protocol.md"
    text = (ROOT / "docs" / "protocol.md").read_text()
    p = protocol()
    assert p.rules["renorm_accuracy"].bound == -0.03 and p.rules["renorm_ted"].side == "below"
    assert p.thresholds["artifact_tm_abs"] == 1e-4 and "artifact_tm_abs: 1.0e-4" in text
    from seamfree.diagnostics.recommend import TM_ABS_NOISE

    assert p.thresholds["artifact_tm_abs"] == TM_ABS_NOISE  # the study's artifact is the diagnosis's
    assert p.group_level(4) == pytest.approx(0.9875)
    # no claim module defines a margin of its own
    for module in ("claims.py", "transfer_claims.py", "values.py"):
        source = (ROOT / "src" / "seamfree" / "study" / module).read_text()
        assert not re.search(r"\b(0\.03|0\.02|1e-4|1e-5|1e-6|0\.05)\b", source), module


def row(kind, norm, dice_images, seed=0, **extra):
    return {"status": "done", "kind": kind, "norm": norm, "dataset": "target", "seed": seed, "batch_size": 2,
            "stage": "transfer", "dice": sum(dice_images) / len(dice_images), "dice_images": dice_images,
            "name": f"{kind}-{norm}-s{seed}", **extra}


def grid_row(norm, batch, seed, dataset="d", ted=(0.0, 0.0, 0.0), dice=(0.8, 0.8, 0.8)):
    return {"status": "done", "kind": "grid", "stage": "in-distribution", "norm": norm, "batch_size": batch,
            "seed": seed, "dataset": dataset, "name": f"{dataset}-{norm}-b{batch}-s{seed}",
            "ted_dice": sum(ted) / len(ted), "ted_dice_images": list(ted),
            "dice": sum(dice) / len(dice), "dice_images": list(dice)}


def verdicts(rows):
    return {c.claim: c.verdict for c in check_claims(rows)}


def test_the_verdict_rule_is_symmetric():
    assert decide(["holds"] * 3) == "reproduced" and decide(["fails"] * 3) == "not reproduced"
    assert decide(["holds", "fails", "undecided"]) == "partly"
    assert decide(["holds", "undecided"]) == decide(["fails", "undecided"]) == "inconclusive"
    assert decide([]) == "not measured"
    # mirrored data: BatchRenorm's gain over BatchNorm negated gives the mirrored verdict, group by group
    images = [0.2, 0.4, 0.6, 0.8]
    for gains, expected in (((0.05, 0.06), "reproduced"), ((0.05, 0.0), "inconclusive"),
                            ((0.05, -0.06), "partly")):
        for sign, verdict in ((1, expected), (-1, {"reproduced": "not reproduced"}.get(expected, expected))):
            rows = []
            for seed in range(3):
                for k, gain in zip((1, 8), gains):
                    rows += [row("finetune", "batchrenorm", [v + sign * gain + 0.002 * seed for v in images],
                                 seed, images=k),
                             row("finetune", "batch", images, seed, images=k)]
            assert verdicts(rows)[TRANSFER] == verdict, (gains, sign)


def test_transfer_verdicts_rest_on_seed_level_paired_intervals():
    images = [0.2, 0.4, 0.6, 0.8]
    rows = [row("finetune", norm, [v + gain for v in images], seed)
            for seed in range(3) for norm, gain in (("batchrenorm", 0.06), ("batch", 0.0), ("instance", 0.01))]
    check = {c.claim: c for c in check_claims(rows)}[TRANSFER]
    assert check.verdict == "reproduced", check.evidence
    assert "− BatchNorm : 0.060 [0.060, 0.060] (n=12 in 3 seeds; seed means 0.060, 0.060, 0.060) → holds" \
        in check.evidence
    assert "at 97.5 % (bonferroni over 2 groups)" in check.evidence
    # two target images and one seed, as the first study had: never a verdict
    two = [row("finetune", "batchrenorm", [0.5, 0.6]), row("finetune", "batch", [0.4, 0.45])]
    assert verdicts(two)[TRANSFER] == "inconclusive"


def test_recalibration_conversion_and_the_eval_drop_are_decided_by_intervals():
    zero = [0.3, 0.5, 0.7, 0.4, 0.6]
    rows = [row("zero-shot", "batch", zero, s) for s in range(3)]
    helped = rows + [row("recalibrate", "batch", [v + 0.02 for v in zero], s) for s in range(3)]
    assert verdicts(helped)[RECALIBRATION] == "reproduced"
    hurt = rows + [row("recalibrate", "batch", [v - 0.02 for v in zero], s) for s in range(3)]
    assert verdicts(hurt)[RECALIBRATION] == "not reproduced"
    tuned = [row("finetune", "batch", zero, s) for s in range(3)]
    converted = [row("convert", "batchrenorm", [v - 0.01 for v in zero], s) for s in range(3)]
    assert verdicts(tuned + converted)[CONVERSION] == "reproduced"
    far = [row("convert", "batchrenorm", [v - 0.1 for v in zero], s) for s in range(3)]
    assert verdicts(tuned + far)[CONVERSION] == "not reproduced"
    # the eval-mode drop has two verdicts: under domain shift and in distribution
    inside = [{**row("grid", "batch", [0.9], s), "stage": "in-distribution", "delta_dice": -0.1,
               "delta_dice_images": [-0.11, -0.09]} for s in range(3)]
    drops = [{**row("zero-shot", "batch", [0.5], s), "delta_dice": d, "delta_dice_images": [d - 0.01, d + 0.01]}
             for s, d in enumerate((0.05, 0.04, 0.06))]
    both = verdicts(inside + drops)
    assert both[DROP_SHIFT] == "reproduced" and both[DROP_INSIDE] == "not reproduced"
    assert verdicts(inside)[DROP_SHIFT] == "not measured"
    mixed = [{**r, "delta_dice_images": [-0.2, 0.2]} for r in drops]
    assert verdicts(inside + mixed)[DROP_SHIFT] == "inconclusive"


def test_transfer_verdicts_are_judged_at_every_number_of_target_images():
    images = [0.2, 0.4, 0.6, 0.8]
    rows = []
    for seed in range(3):
        for k, gain in ((1, 0.05), (8, -0.04)):  # BatchRenorm ahead with one target image, behind with eight
            rows += [row("finetune", "batchrenorm", [v + gain for v in images], seed, images=k),
                     row("finetune", "batch", images, seed, images=k)]
    check = {c.claim: c for c in check_claims(rows)}[TRANSFER]
    assert check.verdict == "partly", check.evidence
    assert "k=1: 0.050 [0.050, 0.050]" in check.evidence and "k=8: -0.040" in check.evidence
    # recalibrated at each k against the one zero-shot row per seed: every k is paired with it
    zero = [row("zero-shot", "batch", images, s) for s in range(3)]
    recalibrated = [row("recalibrate", "batch", [v + 0.01 * k for v in images], s, images=k)
                    for s in range(3) for k in (1, 2)]
    check = {c.claim: c for c in check_claims(zero + recalibrated)}[RECALIBRATION]
    assert check.verdict == "reproduced" and "k=1: 0.010" in check.evidence and "k=2: 0.020" in check.evidence


def test_grid_verdicts_compare_seed_level_intervals_per_dataset():
    # BatchNorm's TED grows as the batch shrinks on dataset a; on dataset b it is noise either way
    rows = [grid_row("batch", 1, s, "a", ted=(0.30, 0.20, 0.25)) for s in range(3)] + \
        [grid_row("batch", 8, s, "a", ted=(0.05, 0.04, 0.06)) for s in range(3)]
    assert verdicts(rows)[DISPARITY] == "reproduced"
    noisy = rows + [grid_row("batch", 1, s, "b", ted=(0.10, 0.00, 0.05)) for s in range(3)] + \
        [grid_row("batch", 8, s, "b", ted=(0.00, 0.10, 0.05)) for s in range(3)]
    check = {c.claim: c for c in check_claims(noisy)}[DISPARITY]
    assert check.verdict == "inconclusive" and "b: b1 0.050 − b8 0.050 = 0.000" in check.evidence
    assert "holds in 1, fails in 0, undecided in 1 of 2 groups" in check.evidence
    reversed_ = [{**r, "batch_size": 9 - r["batch_size"]} for r in rows]  # the larger batch has the larger TED
    assert verdicts(reversed_)[DISPARITY] == "not reproduced"
    # one seed: an interval of one unit decides nothing
    single = [grid_row("batch", 1, 0, ted=(0.3, 0.31)), grid_row("batch", 8, 0, ted=(0.05, 0.06))]
    assert verdicts(single)[DISPARITY] == "inconclusive"


def test_batchrenorm_removes_or_keeps_accuracy_by_intervals():
    batchnorm = [grid_row("batch", 1, s, ted=(0.30, 0.20, 0.25), dice=(0.80, 0.70, 0.90)) for s in range(3)]
    removed = [{**grid_row("batchrenorm", 1, s, ted=(0.0, 0.001, 0.0), dice=(0.79, 0.69, 0.89)), "clip_rate": 0.0}
               for s in range(3)]
    checks = {c.claim: c for c in check_claims(batchnorm + removed)}
    assert checks[REMOVES].verdict == "reproduced", checks[REMOVES].evidence
    assert "r/d clipped in 0.0% of the statistics" in checks[REMOVES].evidence
    assert checks[KEEPS].verdict == "reproduced", checks[KEEPS].evidence  # −0.01, inside the 0.03 margin
    assert "d b1 − BatchNorm: -0.010 [-0.010, -0.010] (n=9 in 3 seeds" in checks[KEEPS].evidence
    reduced = [grid_row("batchrenorm", 1, s, ted=(0.10, 0.05, 0.08), dice=(0.70, 0.60, 0.80)) for s in range(3)]
    checks = {c.claim: c for c in check_claims(batchnorm + reduced)}
    assert checks[REMOVES].verdict == "not reproduced"  # lower than BatchNorm's, but above the 0.02 bound
    assert checks[KEEPS].verdict == "not reproduced"  # −0.1, the whole interval below −0.03
    # BatchRenorm ahead on some seeds, behind on others by more than the margin: the interval straddles it
    straddles = [grid_row("batchrenorm", 1, s, ted=(0.0, 0.0, 0.0), dice=[0.9 - 0.1 * s] * 3) for s in range(3)]
    assert verdicts(batchnorm + straddles)[KEEPS] == "inconclusive"
