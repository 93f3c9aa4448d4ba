"""The study's confidence intervals and the verdicts built on them: a hand-computed bootstrap, paired differences,
and "inconclusive" whenever the interval does not decide (or rests on fewer than 3 pairs)."""

from __future__ import annotations

import pytest

from seamfree.errors import ConfigError
from seamfree.study import check_claims
from seamfree.study.statistics import bootstrap_ci, compare, paired_difference

TRANSFER = "BatchRenorm transfers best to a new dataset"
RECALIBRATION = "Recalibrating BatchNorm statistics on target images is a cheap fix for a domain shift"
CONVERSION = "A trained BatchNorm model can be converted to BatchRenorm and fine-tuned"
EVAL_DROP = "BatchNorm's accuracy drops in eval mode (judged under domain shift)"


def test_the_bootstrap_interval_of_a_hand_computed_case():
    # resampled means of [0, 0, 0, 1] are Binomial(4, 1/4) / 4: P(0) = 0.316, P(≤ 0.5) = 0.949, P(≤ 0.75) = 0.996,
    # so the 2.5th percentile is 0 and the 97.5th is 0.75
    estimate = bootstrap_ci([0.0, 0.0, 0.0, 1.0])
    assert (estimate.mean, estimate.low, estimate.high, estimate.count) == (0.25, 0.0, 0.75, 4)
    assert bootstrap_ci([0.3, 0.3, 0.3]).low == bootstrap_ci([0.3, 0.3, 0.3]).high == pytest.approx(0.3)
    assert bootstrap_ci([0.1, 0.5, 0.2, 0.9]) == bootstrap_ci([0.1, 0.5, 0.2, 0.9])  # seeded: reproducible
    with pytest.raises(ConfigError, match="finite values"):
        bootstrap_ci([0.1, float("nan")])


def test_paired_differences_remove_the_spread_between_images():
    # images differ widely, the method adds 0.05 to each: unpaired intervals overlap, the paired one excludes 0
    base = [0.1, 0.3, 0.5, 0.7, 0.9]
    better = [v + 0.05 for v in base]
    assert bootstrap_ci(better).overlaps(bootstrap_ci(base))
    difference = paired_difference(better, base)
    assert difference.low == pytest.approx(0.05) and compare(difference) == "higher"
    assert compare(paired_difference(base, better)) == "lower"
    assert compare(paired_difference([0.5, 0.6], [0.1, 0.2])) == "inconclusive"  # 2 pairs decide nothing
    assert compare(paired_difference([0.5, 0.4, 0.6, 0.5], [0.45, 0.5, 0.55, 0.52])) == "inconclusive"
    with pytest.raises(ConfigError, match="one to one"):
        paired_difference([1.0], [1.0, 2.0])


def row(kind, norm, dice_images, seed=0, **extra):
    return {"status": "done", "kind": kind, "norm": norm, "dataset": "target", "seed": seed, "batch_size": 2,
            "stage": "transfer", "dice": sum(dice_images) / len(dice_images), "dice_images": dice_images,
            "name": f"{kind}-{norm}-s{seed}", **extra}


def test_transfer_verdicts_rest_on_paired_intervals_over_images_and_seeds():
    images = [0.2, 0.4, 0.6, 0.8]
    rows = [row("finetune", norm, [v + gain for v in images], seed)
            for seed in range(3) for norm, gain in (("batchrenorm", 0.06), ("batch", 0.0), ("instance", 0.01))]
    check = {c.claim: c for c in check_claims(rows)}[TRANSFER]
    assert check.verdict == "reproduced", check.evidence
    assert "BatchRenorm − BatchNorm: 0.060 [0.060, 0.060] (n=12)" in check.evidence
    # BatchRenorm ahead on some images and behind on others: the interval straddles 0
    noisy = [row("finetune", "batchrenorm", [0.25, 0.35, 0.65, 0.75], s) for s in range(3)] + \
        [row("finetune", "batch", images, s) for s in range(3)]
    assert {c.claim: c for c in check_claims(noisy)}[TRANSFER].verdict == "inconclusive"
    worse = [row("finetune", "batchrenorm", [v - 0.1 for v in images], s) for s in range(3)] + \
        [row("finetune", "batch", images, s) for s in range(3)]
    assert {c.claim: c for c in check_claims(worse)}[TRANSFER].verdict == "not reproduced"
    # two target images and one seed, as the first study had: never a verdict
    two = [row("finetune", "batchrenorm", [0.5, 0.6]), row("finetune", "batch", [0.4, 0.45])]
    assert {c.claim: c for c in check_claims(two)}[TRANSFER].verdict == "inconclusive"


def test_recalibration_conversion_and_the_eval_drop_are_decided_by_intervals():
    zero = [0.3, 0.5, 0.7, 0.4, 0.6]
    rows = [row("zero-shot", "batch", zero, s) for s in range(3)]
    helped = rows + [row("recalibrate", "batch", [v + 0.02 for v in zero], s) for s in range(3)]
    assert {c.claim: c for c in check_claims(helped)}[RECALIBRATION].verdict == "reproduced"
    hurt = rows + [row("recalibrate", "batch", [v - 0.02 for v in zero], s) for s in range(3)]
    assert {c.claim: c for c in check_claims(hurt)}[RECALIBRATION].verdict == "not reproduced"
    tuned = [row("finetune", "batch", zero, s) for s in range(3)]
    converted = [row("convert", "batchrenorm", [v - 0.01 for v in zero], s) for s in range(3)]
    assert {c.claim: c for c in check_claims(tuned + converted)}[CONVERSION].verdict == "reproduced"
    far = [row("convert", "batchrenorm", [v - 0.1 for v in zero], s) for s in range(3)]
    assert {c.claim: c for c in check_claims(tuned + far)}[CONVERSION].verdict == "not reproduced"
    # the eval-mode drop is judged under domain shift (zero-shot rows); in distribution it is reported beside
    inside = [{**row("grid", "batch", [0.9], s), "stage": "in-distribution", "delta_dice": -0.1,
               "delta_dice_images": [-0.11, -0.09]} for s in range(3)]
    drops = [{**row("zero-shot", "batch", [0.5], s), "delta_dice": d, "delta_dice_images": [d - 0.01, d + 0.01]}
             for s, d in enumerate((0.05, 0.04, 0.06))]
    check = {c.claim: c for c in check_claims(inside + drops)}[EVAL_DROP]
    assert check.verdict == "reproduced", check.evidence
    assert "under domain shift (zero-shot), 3 models" in check.evidence
    assert "in distribution, 3 models" in check.evidence
    assert {c.claim: c for c in check_claims(inside)}[EVAL_DROP].verdict == "not measured"  # no shifted model
    mixed = [{**r, "delta_dice_images": [-0.2, 0.2]} for r in drops]
    assert {c.claim: c for c in check_claims(inside + mixed)}[EVAL_DROP].verdict == "inconclusive"


def test_transfer_verdicts_are_judged_at_every_number_of_target_images():
    images = [0.2, 0.4, 0.6, 0.8]
    rows = []
    for seed in range(3):
        for k, gain in ((1, 0.05), (8, -0.04)):  # BatchRenorm ahead with one target image, behind with eight
            rows += [row("finetune", "batchrenorm", [v + gain for v in images], seed, images=k),
                     row("finetune", "batch", images, seed, images=k)]
    check = {c.claim: c for c in check_claims(rows)}[TRANSFER]
    assert check.verdict == "not reproduced", check.evidence
    assert "k=1: 0.050 [0.050, 0.050] (n=12)" in check.evidence and "k=8: -0.040" in check.evidence
    # recalibrated at each k against the one zero-shot row per seed: every k is paired with it
    zero = [row("zero-shot", "batch", images, s) for s in range(3)]
    recalibrated = [row("recalibrate", "batch", [v + 0.01 * k for v in images], s, images=k)
                    for s in range(3) for k in (1, 2)]
    check = {c.claim: c for c in check_claims(zero + recalibrated)}[RECALIBRATION]
    assert check.verdict == "reproduced" and "k=1: 0.010" in check.evidence and "k=2: 0.020" in check.evidence


DISPARITY = "BatchNorm has a train/eval disparity that grows as the training batch shrinks"
REMOVES = "BatchRenorm removes the train/eval disparity, even with small batches"
KEEPS = "BatchRenorm keeps the accuracy"


def grid_row(norm, batch, seed, dataset="d", ted=(0.0, 0.0, 0.0), dice=(0.8, 0.8, 0.8)):
    return {"status": "done", "kind": "grid", "stage": "in-distribution", "norm": norm, "batch_size": batch,
            "seed": seed, "dataset": dataset, "name": f"{dataset}-{norm}-b{batch}-s{seed}",
            "ted_dice": sum(ted) / len(ted), "ted_dice_images": list(ted),
            "dice": sum(dice) / len(dice), "dice_images": list(dice)}


def test_grid_verdicts_compare_intervals_over_seeds_and_images_per_dataset():
    # BatchNorm's TED grows as the batch shrinks on dataset a; on dataset b it is noise either way
    rows = [grid_row("batch", 1, s, "a", ted=(0.30, 0.20, 0.25)) for s in range(3)] + \
        [grid_row("batch", 8, s, "a", ted=(0.05, 0.04, 0.06)) for s in range(3)]
    assert {c.claim: c for c in check_claims(rows)}[DISPARITY].verdict == "reproduced"
    noisy = rows + [grid_row("batch", 1, s, "b", ted=(0.10, 0.00, 0.05)) for s in range(3)] + \
        [grid_row("batch", 8, s, "b", ted=(0.00, 0.10, 0.05)) for s in range(3)]
    check = {c.claim: c for c in check_claims(noisy)}[DISPARITY]
    assert check.verdict == "partly" and "b: b1 0.050 − b8 0.050 = 0.000" in check.evidence
    only_noise = [r for r in noisy if r["dataset"] == "b"]
    assert {c.claim: c for c in check_claims(only_noise)}[DISPARITY].verdict == "inconclusive"
    reversed_ = [{**r, "batch_size": 9 - r["batch_size"]} for r in rows]  # the larger batch has the larger TED
    assert {c.claim: c for c in check_claims(reversed_)}[DISPARITY].verdict == "not reproduced"
    # one seed, one image: an interval of one value decides nothing
    single = [grid_row("batch", 1, 0, ted=(0.3,)), grid_row("batch", 8, 0, ted=(0.05,))]
    assert {c.claim: c for c in check_claims(single)}[DISPARITY].verdict == "inconclusive"


def test_batchrenorm_removes_reduces_or_keeps_accuracy_by_intervals():
    batchnorm = [grid_row("batch", 1, s, ted=(0.30, 0.20, 0.25), dice=(0.80, 0.70, 0.90)) for s in range(3)]
    removed = [grid_row("batchrenorm", 1, s, ted=(0.0, 0.001, 0.0), dice=(0.79, 0.69, 0.89)) for s in range(3)]
    checks = {c.claim: c for c in check_claims(batchnorm + removed)}
    assert checks[REMOVES].verdict == "reproduced", checks[REMOVES].evidence
    assert checks[KEEPS].verdict == "reproduced", checks[KEEPS].evidence  # −0.01, inside the 0.03 margin
    assert "d b1: − BatchNorm -0.010 [-0.010, -0.010] (n=9)" in checks[KEEPS].evidence
    reduced = [grid_row("batchrenorm", 1, s, ted=(0.10, 0.05, 0.08), dice=(0.70, 0.60, 0.80)) for s in range(3)]
    checks = {c.claim: c for c in check_claims(batchnorm + reduced)}
    assert checks[REMOVES].verdict == "partly"  # lower than BatchNorm's, not gone
    assert checks[KEEPS].verdict == "not reproduced"  # −0.1, the whole interval below −0.03
    # BatchRenorm ahead on some images, behind on others by more than the margin: the interval straddles it
    straddles = [grid_row("batchrenorm", 1, s, ted=(0.0, 0.0, 0.0), dice=(0.90, 0.60, 0.85)) for s in range(3)]
    assert {c.claim: c for c in check_claims(batchnorm + straddles)}[KEEPS].verdict == "inconclusive"
