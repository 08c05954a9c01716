"""Ground truth checked at load: a row whose answer its reward modes cannot score is a bad row.

`meta_info["mode"]` is either this project's own mode (`multiple_choice | numeric | bbox3d`) or a list of VST
score names (`projects/spatial_rl/examples/reward_function/reward_func.py` get_accuracy_reward; `bbox3d` goes
to `iou_reward.py`). The checks use the same parsers the scorers use, and are as lenient as VST where VST is:
with several modes the reward is their maximum, so one mode able to score the answer is enough.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from spatial_tuning.rewards import extract_choice, ground_truth_boxes, ground_truth_choice
from spatial_tuning.row_problems import (
    ANSWER_NOT_BOXES,
    ANSWER_NOT_CHOICE,
    ANSWER_NOT_NUMBER,
    EMPTY_ANSWER,
    UNKNOWN_REWARD_MODE,
    RowProblem,
)

OWN_MODES = ("multiple_choice", "numeric", "bbox3d")
VST_MODES = ("multi_choices_score", "relaxed_score", "vqa_score", "anls_score", "math_score", "bbox3d")
# reward_func.py extract_single_choice_with_word_boundary: a capital A-F standing alone, not the article "A x".
_VST_LETTER = re.compile(r"\b[A-F]\b(?!\s[a-zA-Z])")


def check_ground_truth(meta_info: Mapping[str, Any]) -> None:
    """Raise `RowProblem` naming why `meta_info["answer"]` cannot be scored in `meta_info["mode"]`; rows
    without a mode carry no reward ground truth and pass."""
    if "mode" not in meta_info:
        return
    mode, answer = meta_info["mode"], meta_info.get("answer")
    if answer is None or (isinstance(answer, (str, list, tuple)) and not _text(answer)):
        raise RowProblem(EMPTY_ANSWER, f"meta_info.answer is empty for mode {mode!r}")
    if isinstance(mode, str) and mode in OWN_MODES:
        _check_own_mode(mode, meta_info)
        return
    if not isinstance(mode, list) or not all(isinstance(m, str) for m in mode):
        raise RowProblem(UNKNOWN_REWARD_MODE, f"meta_info.mode={mode!r}: expected one of {', '.join(OWN_MODES)} "
                         f"or a list of VST score names ({', '.join(VST_MODES)})")
    unknown = [m for m in mode if m not in VST_MODES]
    if unknown:
        raise RowProblem(UNKNOWN_REWARD_MODE, f"meta_info.mode has {unknown}, not VST score names "
                         f"({', '.join(VST_MODES)})")
    if "bbox3d" in mode:  # vlm3d.py compute_score: bbox3d rows are scored by iou_reward alone
        _check_own_mode("bbox3d", meta_info)
        return
    problems = [_vst_problem(m, meta_info) for m in mode]
    if mode and all(problems):
        reason, detail = problems[0]
        raise RowProblem(reason, detail + (f" (and no other mode of {mode} can score it)" if len(mode) > 1 else ""))


def _check_own_mode(mode: str, meta_info: Mapping[str, Any]) -> None:
    try:
        if mode == "multiple_choice":
            ground_truth_choice(meta_info)
        elif mode == "numeric":
            float(str(meta_info["answer"]).replace(",", ""))  # as rewards.numeric_accuracy reads it
        elif not ground_truth_boxes(meta_info):
            raise ValueError(f"bbox3d meta_info.answer has no box: {meta_info['answer']!r:.120}")
    except (ValueError, TypeError) as error:
        reason = {"multiple_choice": ANSWER_NOT_CHOICE, "numeric": ANSWER_NOT_NUMBER}.get(mode, ANSWER_NOT_BOXES)
        raise RowProblem(reason, str(error)) from error


def _vst_problem(mode: str, meta_info: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why one VST score cannot score the answer, or None when it can."""
    answer = _text(meta_info["answer"])
    if mode == "multi_choices_score":
        stripped = re.sub(r"`+([^`]*)`+", r"\1", answer)  # VST takes the text inside backticks first
        if _VST_LETTER.search(stripped) or extract_choice(answer, meta_info.get("options")):
            return None
        return ANSWER_NOT_CHOICE, f"multi_choices_score answer {answer!r:.80} has no option letter A-F"
    if mode == "relaxed_score":
        # reward_func.py relaxed_correctness: a number (a trailing % allowed), or a 4-character 20xx year.
        if (len(answer) == 4 and answer.startswith("20")) or _is_float(answer.removesuffix("%")):
            return None
        return ANSWER_NOT_NUMBER, f"relaxed_score answer {answer!r:.80} is not a number"
    return None  # vqa_score, anls_score, math_score: any non-empty text can be compared


def _text(answer: Any) -> str:
    return answer.strip() if isinstance(answer, str) else str(answer) if answer not in ([], ()) else ""


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
