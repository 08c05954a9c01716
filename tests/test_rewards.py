"""Rewards: this project's own modes (multiple-choice letters, relaxed numeric, 3D boxes), VST's score modes (the
reward table, worked out by hand), the think format, the weighted total, and VST's prompts."""

from __future__ import annotations

import io
import json
import math
import threading

import pytest
from PIL import Image

from spatial_tuning.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    THINK_SYSTEM_PROMPT,
    VLM3D_REASONER_PROMPT,
    uses_think_prompt,
)
from spatial_tuning.rewards import (
    accuracy_reward,
    bbox3d_scores,
    extract_choice,
    extract_number,
    format_reward,
    is_scorable,
    label_similarity,
    parse_boxes,
    relaxed_numeric_accuracy,
    split_answer,
    vst_reward,
)
from spatial_tuning.sample import SpatialSample
from spatial_tuning.vst_scores import (
    anls_score,
    choice_letter,
    math_score,
    normalize_vqa_answer,
    relaxed_score,
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
    ("Sure. <think>x</think> B", 1.0),                        # text before the block: VST's findall allows it
    ("<think>x</think> B <think>", 1.0),                      # one complete block, non-empty text after </think>
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


# --- VST score modes: the reward table --------------------------------------------------------------------
# Each row: completion, ground truth (VST's `answer` column), the row's modes, and the accuracy VST's
# `vlm3d.compute_score` gives it, worked out by hand. Format is VST's (exactly one <think>...</think>, non-empty
# text after the last </think>) and overall = 0.5 * accuracy + 0.5 * format.
MCQ, REL, VQA, ANLS, MATH = ["multi_choices_score"], ["relaxed_score"], ["vqa_score"], ["anls_score"], ["math_score"]
VST_TABLE = [
    # exact match (case-insensitive) of the text after </think> scores 1 before any mode is tried
    ("<think>the cup is nearer</think> B", "B", MCQ, 1.0, 1.0),
    ("<think>x</think> b", "B", MCQ, 1.0, 1.0),
    # multi_choices: the first capital A-F standing alone and not followed by " word"
    ("<think>x</think> (B) blue ball", "B", MCQ, 1.0, 1.0),              # "B)" qualifies
    ("<think>x</think> B", "B. blue ball", MCQ, 1.0, 1.0),               # letter read from the ground truth too
    ("<think>x</think> A red box is farther, so B", "B", MCQ, 1.0, 1.0),  # "A red": the article, skipped
    ("<think>x</think> B because it is nearer", "B", MCQ, 0.0, 1.0),      # "B because" is skipped too: no letter
    ("<think>x</think> blue ball", "B", MCQ, 0.0, 1.0),                   # option text is not read
    ("<think>x</think> The answer is `C`.", "C", MCQ, 1.0, 1.0),          # a `...` span narrows the search
    ("<think>B</think> A", "B", MCQ, 0.0, 1.0),                           # the reasoning does not count
    # format failures
    ("<think>The answer is B</think>", "B", MCQ, 0.0, 0.0),               # nothing after </think>
    ("B", "B", MCQ, 1.0, 0.0),                                            # right, no think block
    ("<think>a</think><think>b</think> B", "B", MCQ, 1.0, 0.0),           # two blocks
    ("<think>x</think> B </think>", "B", MCQ, 0.0, 0.0),                  # the answer is after the LAST </think>
    ("<think>unclosed, so B", "B", MCQ, 1.0, 0.0),                        # no </think>: the whole text is read
    # relaxed: |pred - gt| / |gt| <= 0.05 when both are floats
    ("<think>x</think> 105", "100", REL, 1.0, 1.0),                       # 5 / 100 = 0.05: inside
    ("<think>x</think> 105.1", "100", REL, 0.0, 1.0),                     # 0.051
    ("<think>x</think> 95", "100", REL, 1.0, 1.0),
    ("<think>x</think> 94.9", "100", REL, 0.0, 1.0),
    ("<think>x</think> 105 m", "100", REL, 0.0, 1.0),                     # not a float: exact text only
    ("<think>x</think> 52", "50%", REL, 1.0, 1.0),                        # "50%" reads 50 (not 0.5): 2 / 50 = 0.04
    ("<think>x</think> 0.5", "50%", REL, 0.0, 1.0),
    ("<think>x</think> 2020", "2019", REL, 0.0, 1.0),                     # year rule: 4 chars "20..": exact only
    ("<think>x</think> 2019.0", "2019", REL, 0.0, 1.0),
    ("<think>x</think> 20.6", "20.5", REL, 0.0, 1.0),                     # "20.5" is 4 chars from "20" too
    ("<think>x</think> 2050", "1999", REL, 1.0, 1.0),                     # not "20..": 51 / 1999 = 0.026
    ("<think>x</think> 0.0", "0", REL, 0.0, 1.0),                         # zero ground truth: exact text only
    # vqa: EvalAI normalisation, then equality
    ("<think>x</think> Two dogs.", "2 dogs", VQA, 1.0, 1.0),              # number word, final period
    ("<think>x</think> Red cup!", "the red cup", VQA, 1.0, 1.0),          # "!" -> space, article dropped
    ("<think>x</think> dont know", "don't know", VQA, 1.0, 1.0),          # contraction restored
    ("<think>x</think> 3.5.", "3.5", VQA, 1.0, 1.0),                      # only the period before no digit goes
    ("<think>x</think> two cats", "2 dogs", VQA, 0.0, 1.0),
    ("<think>x</think> the", "a", VQA, 0.0, 1.0),                         # both normalise to "": never a match
    ("<think>x</think> 1/2", "0.5", VQA, 0.0, 1.0),                       # "/" -> space: "1 2"
    # anls: 1 - dist / max(len(raw gt), len(raw pred)), on lower-cased, space-collapsed text; 0 from NL >= 0.5
    ("<think>x</think> Main Stret", "Main Street", ANLS, 1 - 1 / 11, 1.0),  # one deletion over 11 chars
    ("<think>x</think> sitting", "kitten", ANLS, 1 - 3 / 7, 1.0),          # 3 edits over 7 chars
    ("<think>x</think> new yrk", "New  York", ANLS, 1 - 1 / 9, 1.0),       # length of the raw "New  York": 9
    ("<think>x</think> abxy", "abcd", ANLS, 0.0, 1.0),                     # NL = 2 / 4 = 0.5: thresholded
    ("<think>x</think> xyz", "abc", ANLS, 0.0, 1.0),                       # VST's code would return 1.0 here
    # math: math-verify equivalence
    ("<think>x</think> \\frac{1}{2}", "0.5", MATH, 1.0, 1.0),
    ("<think>x</think> 0.5", "\\frac{1}{2}", MATH, 1.0, 1.0),
    ("<think>x</think> so \\boxed{0.5}", "\\boxed{\\frac{1}{2}}", MATH, 1.0, 1.0),  # both boxed: contents compared
    ("<think>x</think> $3$", "3", MATH, 1.0, 1.0),
    ("<think>x</think> 12.0001", "12", MATH, 0.0, 1.0),
    ("<think>x</think> two", "2", MATH, 0.0, 1.0),                          # words are not maths
    # several modes: the best one counts
    ("<think>x</think> 1/2", "0.5", ["vqa_score", "math_score"], 1.0, 1.0),  # vqa 0, math 1
    ("<think>x</think> 2 dogs", "Two dogs", ["anls_score", "vqa_score"], 1.0, 1.0),  # vqa 1 beats anls 0
]


@pytest.mark.parametrize("completion, truth, modes, accuracy, fmt", VST_TABLE)
def test_vst_reward_table(completion, truth, modes, accuracy, fmt):
    scores = vst_reward(completion, {"mode": modes, "answer": truth})
    assert scores["accuracy"] == pytest.approx(accuracy) and scores["format"] == fmt
    assert scores["overall"] == pytest.approx(0.5 * accuracy + 0.5 * fmt)


VST_BOX = json.dumps([{"label": "red box", "bbox_3d": BOX}])


@pytest.mark.parametrize("completion, accuracy, fmt", [
    ("```json\n" + VST_BOX + "\n```", 1.0, 1.0),                    # fenced JSON, the same box
    (VST_BOX, 1.0, 1.0),                                             # bare JSON
    ("<think>x</think>```json\n" + VST_BOX + "\n```", 1.0, 0.0),     # no line that is exactly ```json: not JSON
    ('```json\n[{"label": "red box", "bbox_3d": [1, 2, 3]}]\n```', 0.0, 0.0),  # 3 values, not 9
    ('```json\n[{"bbox_3d": ' + json.dumps(BOX) + "}]\n```", 0.0, 0.0),  # no label: bad format, cannot match
])
def test_vst_bbox3d_rows_score_boxes_and_json_format(completion, accuracy, fmt):
    # VST's 3D-detection rows: no think prompt, accuracy from boxes (this project's scorer), format = JSON boxes.
    scores = vst_reward(completion, {"mode": ["bbox3d"], "answer": "```json\n" + VST_BOX + "\n```"})
    assert scores["accuracy"] == pytest.approx(accuracy) and scores["format"] == fmt


@pytest.mark.parametrize("text, expected", [
    ("Two dogs.", "2 dogs"), ("2 dogs", "2 dogs"), ("The cat's toy!", "cat 's toy"), ("dont know", "don't know"),
    ("3.5 m.", "3.5 m"), ("red-white", "red white"), ("a - b", "b"), ("None", "0"), ("1,000", "1000"),
])
def test_evalai_normalisation(text, expected):
    assert normalize_vqa_answer(text) == expected


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(B)", "B"), ("B. blue ball", "B"), ("A red box", None), ("b", None), ("``D``", "D"),
    ("The answer is B because", None), ("A or B", "B"), ("G", None),  # "A or": a letter before a word
])
def test_vst_choice_letter(text, letter):
    # The first standalone capital A-F not followed by a space and a letter; lower case never counts.
    assert choice_letter(text) == letter


def test_anls_is_a_similarity_and_relaxed_reads_percent_without_scaling():
    assert anls_score("abc", "abc") == 1.0 and anls_score("xyz", "abc") == 0.0
    assert anls_score("abxy", "abcd", threshold=0.6) == pytest.approx(0.5)  # NL 0.5 passes a looser threshold
    assert relaxed_score("4.9%", "5%") == 1.0 and relaxed_score("5.3%", "5%") == 0.0  # 0.3 / 5 = 0.06


def test_math_score_works_off_the_main_thread():
    # math-verify's timeouts use signal.alarm, which only the main thread may set (TRL or a server may score in
    # a worker thread); there the score runs without a timeout instead of raising.
    results = []
    worker = threading.Thread(target=lambda: results.append(math_score("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join()
    assert results == [1.0]


def test_unknown_modes_and_empty_modes():
    with pytest.raises(ValueError, match="exp_rate"):
        vst_reward("<think>x</think> B", {"mode": ["exp_rate"], "answer": "B"})
    with pytest.raises(ValueError, match="mode"):
        vst_reward("<think>x</think> B", {"mode": "numerical", "answer": "B"})
    # No modes: only the exact-match shortcut can score.
    assert accuracy_reward("<think>x</think> b", {"mode": [], "answer": "B"}) == 1.0
    assert accuracy_reward("<think>x</think> (B)", {"mode": [], "answer": "B"}) == 0.0
    assert is_scorable({"mode": ["vqa_score"], "answer": "2"}) and is_scorable({"mode": "numeric", "answer": 2})
    assert not is_scorable({"mode": ["vqa_score"]}) and not is_scorable({"mode": ["exp_rate"], "answer": "x"})


# --- VST prompts ----------------------------------------------------------------------------------------


def test_think_prompt_is_vst_text():
    # VST's README (THINK_SYSTEM_PROMPT) and examples/format_prompt/vlm3d_reasoner.jinja, character for character.
    assert THINK_SYSTEM_PROMPT == VLM3D_REASONER_PROMPT == (
        "You are a helpful assistant. You should first think about the reasoning process in the mind and then "
        "provide the user with the answer. The reasoning process is enclosed within <think> </think> tags, i.e. "
        "<think> reasoning process here </think> answer here.")
    assert DEFAULT_SYSTEM_PROMPT == "You are a helpful assistant."


@pytest.mark.parametrize("mode, sample_think, fmt, think, expected", [
    (["multi_choices_score"], False, "vlm3d_reasoner", True, True),
    (["bbox3d"], True, "vlm3d_reasoner", True, False),         # VST's RL: no think prompt for 3D detection
    ("bbox3d", True, "vlm3d_reasoner", None, False),
    ("bbox3d", True, "none", None, True),                      # per sample
    (["vqa_score"], True, "none", False, False),
    (["vqa_score"], False, "vlm3d_reasoner", None, False),
])
def test_uses_think_prompt(mode, sample_think, fmt, think, expected):
    assert uses_think_prompt({"mode": mode}, sample_think, fmt, think) is expected
    with pytest.raises(ValueError, match="prompt.format"):
        uses_think_prompt({"mode": mode}, sample_think, "r1", think)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_rendered_rl_prompt_is_vsts(tiny_backbone):
    from spatial_tuning.grpo import rl_rows

    _, processor = tiny_backbone
    question = SpatialSample("q1", [{"from": "human", "value": "<image>Which object is closer to the camera?"},
                                    {"from": "gpt", "value": "A"}], images=[_png()],
                             meta_info={"mode": ["multi_choices_score"], "answer": "A"})
    detection = SpatialSample("q2", [{"from": "human", "value": "<image>Detect the red box."},
                                     {"from": "gpt", "value": VST_BOX}], images=[_png()],
                              meta_info={"mode": ["bbox3d"], "answer": VST_BOX})
    rows = rl_rows([question, detection], think=True, prompt_format="vlm3d_reasoner")
    rendered = [processor.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    # As VST's RLHFDatasetVLM3D builds it: the format prompt as the system turn, the question unchanged.
    assert rendered[0] == (
        "<|im_start|>system\nYou are a helpful assistant. You should first think about the reasoning process in the "
        "mind and then provide the user with the answer. The reasoning process is enclosed within <think> </think> "
        "tags, i.e. <think> reasoning process here </think> answer here.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which object is closer to the camera?"
        "<|im_end|>\n<|im_start|>assistant\n")
    # 3D detection: no format prompt, so the template's default system prompt.
    assert rendered[1] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Detect the red box.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert [r["think"] for r in rows] == [True, False]
