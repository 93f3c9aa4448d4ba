"""Instance metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seamfree.metrics import instance_metrics, instance_mismatch


def test_identical_segmentations_score_one():
    truth = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
    m = instance_metrics(truth * 3, truth)
    assert (m["msa"], m["sa50"], m["matched_iou"], m["true_positives"]) == (1.0, 1.0, 1.0, 2)


def test_empty_images():
    empty = np.zeros((3, 3), int)
    assert instance_metrics(empty, empty)["msa"] == 1.0 and math.isnan(instance_metrics(empty, empty)["matched_iou"])
    truth = np.array([[1, 0, 2]])
    m = instance_metrics(np.zeros_like(truth), truth)
    assert (m["msa"], m["sa50"], m["false_negatives"], m["matched_iou"]) == (0.0, 0.0, 2, 0.0)


def test_a_partial_overlap_counts_at_the_thresholds_below_its_iou():
    truth = np.zeros((1, 10), int)
    truth[0, :] = 1
    predicted = np.zeros_like(truth)
    predicted[0, :7] = 5  # IoU 0.7: matched at 0.5, 0.55, 0.6, 0.65, 0.7; missed at 0.75 ... 0.95
    m = instance_metrics(predicted, truth)
    assert m["sa50"] == 1.0 and m["msa"] == pytest.approx(0.5) and m["matched_iou"] == pytest.approx(0.7)


def test_a_merge_of_two_objects():
    truth = np.array([[1] * 5 + [2] * 5])
    predicted = np.ones_like(truth)  # one object over both: IoU 0.5 with each, one of them matches at 0.5
    m = instance_metrics(predicted, truth)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (1, 0, 1)
    assert m["sa50"] == 0.5 and m["msa"] == pytest.approx(0.05)


def test_instance_mismatch_counts_cut_and_merged_objects():
    a = np.zeros((6, 12), int)
    a[1:5, 1:5] = 1
    a[1:5, 7:11] = 2
    same = np.where(a > 0, 10 - a, 0)
    assert instance_mismatch(a, same)[:2] == (0, 0)
    cut = a.copy()
    cut[1:5, 3:5][cut[1:5, 3:5] == 1] = 3  # object 1 cut in halves by a seam: IoU 0.5 each, one half matches
    cut[1:5, 7:8] = 0  # object 2 loses a quarter: IoU 0.75, still the same object
    lost_a, lost_b, where = instance_mismatch(a, cut)
    assert (lost_a, lost_b) == (0, 1) and where[1:5, 3:5].all() and not where[1:5, 7:11].any()
    merged = np.where(a > 0, 1, 0)
    merged[1:5, 5:7] = 1  # a bridge merges both (IoU 16/40 with each): neither keeps a partner, nor the merger
    assert instance_mismatch(a, merged)[:2] == (2, 1)
