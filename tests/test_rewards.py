"""VST rewards: format, multiple-choice letters, relaxed numeric, 3D boxes, and the weighted total."""

from __future__ import annotations

import json
import math

import pytest

from spatial_tuning.rewards import (
    accuracy_reward,
    bbox3d_scores,
    extract_choice,
    extract_number,
    format_reward,
    label_similarity,
    parse_boxes,
    relaxed_numeric_accuracy,
    split_answer,
    vst_reward,
)

MC = {"mode": "multiple_choice", "answer": "B", "options": ["red box", "blue ball", "green cup", "both"]}
NUM = {"mode": "numeric", "answer": 2.0, "unit": "m"}
BOX = [0.1, 0.2, 2.0, 0.4, 0.3, 0.5, 0.0, 0.25, 0.0]
BBOX = {"mode": "bbox3d", "answer": [{"label": "red box", "bbox_3d": BOX}]}


@pytest.mark.parametrize("completion, expected", [
    ("<think>the box is nearer</think> B", 1.0),
    ("  <think>reasoning</think>\nThe answer is B.", 1.0),
    ("<think>a</think><think>b</think> B", 0.0),              # two think blocks
    ("<think>a</think> B </think>", 0.0),                     # stray closing tag
    ("<think>reasoning</think>", 0.0),                        # empty answer
    ("<think>reasoning</think>   \n ", 0.0),                  # whitespace-only answer
    ("<think>The answer is B", 0.0),                          # unclosed: answer only inside think
    ("B", 0.0),                                               # no think block
    ("Sure. <think>x</think> B", 0.0),                        # text before the think block
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


def test_format_without_think_prompt_wants_a_plain_answer():
    assert format_reward("B", require_think=False) == 1.0
    assert format_reward("<think>x</think> B", require_think=False) == 0.0
    assert format_reward("   ", require_think=False) == 0.0


@pytest.mark.parametrize("answer, expected", [
    ("B", "B"), ("(B)", "B"), ("b.", "B"), ("b", "B"), ("Answer: (B)", "B"), ("answer: b", "B"),
    ("The answer is B because the ball is nearer.", "B"), ("B) blue ball", "B"),
    ("A red box is farther, so B.", "B"),                       # the article "A" is not option A
    ("blue ball", "B"),                                          # the option's text
    ("A or B", None), ("(A) (C)", None),                         # several letters: ambiguous
    ("the answer is a red box", "A"),                            # option text, not the article
    ("", None), ("I cannot tell.", None),
    ("(E)", None),                                               # outside the four options
])
def test_extract_choice(answer, expected):
    assert extract_choice(answer, MC["options"]) == expected


@pytest.mark.parametrize("answer, unit, expected", [
    ("2", None, 2.0), ("2.0 m", "m", 2.0), ("about 1,234.5 metres", "m", 1234.5), ("1,000,000", None, 1e6),
    ("150 cm", "m", 1.5), ("1.5 m", "cm", 150.0), ("2,5 m", "m", 2.5), ("three", None, 3.0),
    ("The answer is 2.1 m, not 3 m.", "m", 2.1), ("between 1 and 2, so 1.9", None, 1.9), ("-0.75", None, -0.75),
    ("no idea", None, None), ("", None, None),
])
def test_extract_number(answer, unit, expected):
    value = extract_number(answer, unit)
    assert value == pytest.approx(expected) if expected is not None else value is None


@pytest.mark.parametrize("prediction, target, expected", [
    (2.0, 2.0, 1.0), (2.09, 2.0, 1.0), (2.11, 2.0, 0.0), (1.91, 2.0, 1.0), (1.89, 2.0, 0.0),
    (0.0, 0.0, 1.0), (0.1, 0.0, 0.0), (None, 2.0, 0.0), (float("nan"), 2.0, 0.0),
])
def test_relaxed_numeric(prediction, target, expected):
    assert relaxed_numeric_accuracy(prediction, target) == expected


@pytest.mark.parametrize("completion, meta, accuracy, fmt", [
    ("<think>nearer</think> B", MC, 1.0, 1.0),
    ("<think>nearer</think> (b)", MC, 1.0, 1.0),
    ("<think>The answer is B</think>", MC, 0.0, 0.0),          # answer only inside think
    ("<think>The answer is B</think> A", MC, 0.0, 1.0),        # the think text does not count
    ("<think>x</think> A or B", MC, 0.0, 1.0),                 # several letters
    ("B", MC, 1.0, 0.0),                                       # right but unformatted
    ("<think>x</think> 2.05 m", NUM, 1.0, 1.0),
    ("<think>x</think> 205 cm", NUM, 1.0, 1.0),                # unit converted
    ("<think>x</think> about 2,000 m", NUM, 0.0, 1.0),         # thousands comma: 2000, not 2
    ("<think>x</think> 2.2 m", NUM, 0.0, 1.0),
])
def test_accuracy_and_overall(completion, meta, accuracy, fmt):
    scores = vst_reward(completion, meta)
    assert scores["accuracy"] == accuracy and scores["format"] == fmt
    assert scores["overall"] == pytest.approx(0.5 * accuracy + 0.5 * fmt)


def test_weights_are_configurable():
    assert vst_reward("<think>x</think> B", MC, w_acc=0.8, w_fmt=0.2)["overall"] == pytest.approx(1.0)
    assert vst_reward("B", MC, w_acc=0.8, w_fmt=0.2)["overall"] == pytest.approx(0.8)


def test_mode_comes_from_the_ground_truth():
    # A number in a multiple-choice answer is not scored as numeric, and a missing mode is an error.
    assert accuracy_reward("<think>x</think> 2", MC) == 0.0
    with pytest.raises(ValueError, match="mode"):
        accuracy_reward("<think>x</think> B", {"answer": "B"})
    with pytest.raises(ValueError, match="option letter"):
        accuracy_reward("<think>x</think> B", {"mode": "multiple_choice", "answer": "maybe"})


def test_split_answer():
    assert split_answer("<think>r</think> B") == ("r", "B")
    assert split_answer("B") == (None, "B")
    assert split_answer("<think>unfinished") == ("unfinished", "")


def _box_answer(boxes):
    return "<think>x</think>```json\n" + json.dumps(boxes) + "\n```"


def test_bbox3d_perfect_and_partial():
    assert accuracy_reward(_box_answer([{"label": "red box", "bbox_3d": BOX}]), BBOX) == pytest.approx(1.0)
    # Shifted by half its size along its own (yawed) x axis: IoU = 1/3 (>= 0.25, so F1 = 1): 0.5 * 1/3 + 0.5.
    yaw = BOX[7] * math.pi
    shifted = [BOX[0] + 0.2 * math.cos(yaw), BOX[1], BOX[2] - 0.2 * math.sin(yaw), *BOX[3:]]
    assert accuracy_reward(_box_answer([{"label": "red box", "bbox_3d": shifted}]), BBOX) == pytest.approx(2 / 3)
    # A wrong label cannot match; an extra box halves mean IoU and lowers F1.
    assert accuracy_reward(_box_answer([{"label": "chair", "bbox_3d": BOX}]), BBOX) == 0.0
    extra = [{"label": "red box", "bbox_3d": BOX}, {"label": "cup", "bbox_3d": [1, 1, 3, .1, .1, .1, 0, 0, 0]}]
    assert accuracy_reward(_box_answer(extra), BBOX) == pytest.approx(0.5 * 0.5 + 0.5 * (2 * 1 / 3))


def test_bbox3d_hungarian_matching_is_one_to_one():
    ref = [{"label": "box", "bbox_3d": [0, 0, 2, .2, .2, .2, 0, 0, 0]}, {"label": "box", "bbox_3d": [1, 0, 2, .2, .2, .2, 0, 0, 0]}]
    both_on_first = [{"label": "box", "bbox_3d": ref[0]["bbox_3d"]}] * 2
    scores = bbox3d_scores(both_on_first, ref)
    assert scores["mean_iou"] == pytest.approx(0.5) and scores["f1"] == pytest.approx(0.5)


@pytest.mark.parametrize("text", [
    "no boxes here", "```json\n[{\"label\": \"box\", \"bbox_3d\": [1, 2]}]\n```",
    "[{\"label\": \"box\", \"bbox_3d\": [0, 0, 1, 0, 1, 1, 0, 0, 0]}]",       # zero size
    "[{\"label\": \"box\", \"bbox_3d\": [0, 0, 1, 1, 1, 1, 0, 0, \"x\"]}]",
])
def test_malformed_boxes_are_ignored(text):
    assert parse_boxes(text) == []
    assert accuracy_reward("<think>x</think>" + text, BBOX) == 0.0


def test_one_broken_box_does_not_void_the_others():
    text = '[{"label": "red box", "bbox_3d": ' + json.dumps(BOX) + '}, {"label": "cup", "bbox_3d": [1, 2,]}]'
    assert [b["label"] for b in parse_boxes(text)] == ["red box"]


def test_label_similarity_is_a_similarity():
    assert label_similarity("Red_Box", "red box") == 1.0
    assert label_similarity("box", "fox") == pytest.approx(2 / 3)
    assert label_similarity("abc", "xyz") == 0.0
