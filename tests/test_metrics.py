"""Evaluation metrics: MRA against hand-computed values, AP@15 on hand-built detections, chance levels."""

from __future__ import annotations

import math

import pytest

from spatial_tuning.metrics import (
    MRA_THRESHOLDS,
    average_precision_3d,
    bbox3d_chance,
    choice_chance,
    exact_match,
    mean_relative_accuracy,
    numeric_chance,
)


def test_thresholds_are_vsi_benchs():
    assert MRA_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@pytest.mark.parametrize("prediction, target, mra", [
    (10.0, 10.0, 1.0),       # exact: all ten thresholds
    (10.4, 10.0, 1.0),       # 4 % error passes 1 - 0.95 = 5 %
    (10.5, 10.0, 1.0),       # exactly 5 %: VSI-Bench compares with <=
    (10.7, 10.0, 0.9),       # 7 %: passes theta <= 0.90 (10 % tolerance), fails 0.95
    (12.0, 10.0, 0.7),       # 20 %: tolerances 50..20 % pass (theta 0.50..0.80): 7 of 10
    (8.0, 10.0, 0.7),        # symmetric
    (13.3, 10.0, 0.4),       # 33 %: tolerances 50, 45, 40, 35 % pass
    (15.0, 10.0, 0.1),       # 50 %: only theta = 0.50
    (16.0, 10.0, 0.0),
    (None, 10.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0),
])
def test_mean_relative_accuracy(prediction, target, mra):
    assert mean_relative_accuracy(prediction, target) == pytest.approx(mra)


def test_exact_match_and_choice_chance():
    assert exact_match("b", "B") == 1.0 and exact_match(None, "B") == 0.0 and exact_match("A", "B") == 0.0
    assert choice_chance([2, 4]) == pytest.approx(0.375)


def test_numeric_chance_answers_the_mean():
    # Mean of (1, 3) is 2: 100 % error on 1 (MRA 0), 33 % on 3 (MRA 0.4).
    assert numeric_chance([1.0, 3.0]) == pytest.approx(0.2)


def _box(x, label="box", **extra):
    return {"label": label, "bbox_3d": [x, 0, 3, 1, 1, 1, 0, 0, 0], **extra}


def test_ap_perfect_and_empty():
    refs = [[_box(0)], [_box(2), _box(5, "cup")]]
    assert average_precision_3d(refs, refs) == pytest.approx(1.0)
    assert average_precision_3d([[], []], refs) == 0.0
    assert math.isnan(average_precision_3d([[]], [[]]))


def test_ap_ranks_by_order_within_the_answer_or_by_score():
    refs = [[_box(0)]]
    # A miss ranked before the hit: precision 1/2 at recall 1; the hit first: AP 1.
    assert average_precision_3d([[_box(9), _box(0)]], refs) == pytest.approx(0.5)
    assert average_precision_3d([[_box(0), _box(9)]], refs) == pytest.approx(1.0)
    assert average_precision_3d([[_box(9, score=0.1), _box(0, score=0.9)]], refs) == pytest.approx(1.0)
    # Two samples: hit (0.9), miss (0.8), hit (0.7): precision 1 at recall 1/2, 2/3 at recall 1.
    refs = [[_box(0)], [_box(0)]]
    preds = [[_box(0, score=0.9), _box(9, score=0.8)], [_box(0, score=0.7)]]
    assert average_precision_3d(preds, refs) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ap_iou_threshold_is_015():
    refs = [[_box(0)]]
    # Shift 0.7 m of a 1 m box: IoU = 0.3 / 1.7 = 0.176 >= 0.15; shift 0.75: 0.25 / 1.75 = 0.143 < 0.15.
    assert average_precision_3d([[_box(0.7)]], refs) == 1.0
    assert average_precision_3d([[_box(0.75)]], refs) == 0.0


def test_ap_duplicates_are_false_positives_and_classes_average():
    refs = [[_box(0), _box(5, "cup")]]
    preds = [[_box(0), _box(0), _box(5, "cup")]]
    # box: hit then duplicate (AP 1: recall 1 reached at precision 1); cup: AP 1.
    assert average_precision_3d(preds, refs) == pytest.approx(1.0)
    preds = [[_box(0), _box(9, "cup")]]
    assert average_precision_3d(preds, refs) == pytest.approx(0.5)


def test_bbox3d_chance_uses_the_mean_box():
    refs = [[_box(0)], [_box(2)]]
    chance = bbox3d_chance(refs)
    # The mean box sits at x = 1: no overlap with either reference (1 m boxes, 1 m away).
    assert chance["mean_iou"] == 0.0 and chance["ap15"] == 0.0
    chance = bbox3d_chance([[_box(0)], [_box(0.5)]])
    assert chance["mean_iou"] == pytest.approx(0.75 / 1.25)
