"""The one reward entry point for spatial RL and evaluation: accuracy by answer mode, format, and their weighted sum.

`vst_reward(completion, meta_info)` returns `{"overall", "accuracy", "format"}` with overall = 0.5 * accuracy +
0.5 * format (VST's `format_weight=0.5`). `meta_info["answer"]` is the ground truth; `meta_info["mode"]` is either

- a list of VST score names (`multi_choices_score`, `relaxed_score`, `vqa_score`, `anls_score`, `math_score`,
  `bbox3d`), as VST's RL parquet rows carry it: accuracy as VST's `vlm3d.py` computes it (`vst_scores.py`); a row
  whose modes include `bbox3d` is scored on 3D boxes and VST's JSON box format instead (`box_rewards.py`);
- or this project's own mode string: `multiple_choice` (option letter A-F, `meta_info["options"]`), `numeric`
  (within 5 %, `meta_info["unit"]`), `bbox3d`; accuracy is read from the answer part only (an unclosed `<think>`
  leaves no answer).

Format (every row but VST's 3D detection): exactly one `<think>...</think>` (non-overlapping matches of
`<think>.*?</think>`) and non-empty text after the last `</think>`, as VST's `format_reward`; with the think prompt
off (`require_think=False`), a non-empty answer without think tags.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from spatial_tuning.box_rewards import (  # noqa: F401  (re-exported: the 3D-box scorers are part of this API)
    F1_IOU_THRESHOLD,
    bbox3d_accuracy,
    bbox3d_scores,
    box_format_reward,
    ground_truth_boxes,
    label_similarity,
    match_boxes,
    normalize_label,
    parse_boxes,
)
from spatial_tuning.vst_scores import SCORES, answer_after_think, check_modes, vst_accuracy

MODES = ("multiple_choice", "numeric", "bbox3d")  # this project's own mode strings
VST_MODES = (*SCORES, "bbox3d")  # the score names a VST RL row may list
LETTERS = "ABCDEF"
RELATIVE_TOLERANCE = 0.05

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


# --- format ---------------------------------------------------------------------------------------------


def split_answer(completion: str) -> tuple[str | None, str]:
    """`(reasoning, answer)`: the answer is the text after the last `</think>`; with no think tags at all the
    whole completion is the answer; an unclosed `<think>` leaves no answer."""
    if _THINK_CLOSE in completion:
        head, _, answer = completion.rpartition(_THINK_CLOSE)
        return head.split(_THINK_OPEN, 1)[-1], answer.strip()
    if _THINK_OPEN in completion:
        return completion.split(_THINK_OPEN, 1)[1], ""
    return None, completion.strip()


def format_reward(completion: str, require_think: bool = True) -> float:
    """1.0 for exactly one `<think>...</think>` and a non-empty answer after the last `</think>`, else 0.0 (VST's
    rule: text before the think block is allowed). With `require_think=False` (think prompt off), 1.0 for a
    non-empty answer that has no think tags."""
    if not require_think:
        return float(_THINK_OPEN not in completion and _THINK_CLOSE not in completion and bool(completion.strip()))
    if len(_THINK_BLOCK.findall(completion)) != 1:
        return 0.0
    return float(bool(answer_after_think(completion)))


# --- multiple choice ------------------------------------------------------------------------------------


def _letters(n_options: int | None) -> str:
    return LETTERS[: max(1, min(n_options or len(LETTERS), len(LETTERS)))]


def option_texts(options: Any) -> list[str]:
    """Option texts in letter order, from a list (`["A. red box", ...]` or `["red box", ...]`) or a dict
    (`{"A": "red box"}`); a leading letter label is removed."""
    if not options:
        return []
    if isinstance(options, Mapping):
        values = [str(options[k]) for k in sorted(options)]
    else:
        values = [str(v) for v in options]
    return [re.sub(r"^\s*\(?[A-Fa-f][.):]\s*", "", v).strip() for v in values]


def extract_choice(answer: str, options: Any = None) -> str | None:
    """The option letter an answer picks (upper case), or None when there is none or it is ambiguous.

    Accepts "B", "(B)", "b.", "Answer: (B)", "The answer is B because ...", and the text of an option. Several
    different letters with no "answer is" cue are ambiguous and give None.
    """
    allowed = _letters(len(option_texts(options)) or None)
    text = answer.strip()
    if not text:
        return None
    # A bare letter, possibly bracketed or followed by punctuation: lower case is safe only here.
    bare = re.fullmatch(r"[\s(\[]*([A-Fa-f])[\s)\].:,]*", text)
    if bare and bare.group(1).upper() in allowed:
        return bare.group(1).upper()
    # After "answer is" / "answer:", a lower-case letter counts only when bracketed or closing the sentence, so
    # "the answer is a red box" does not read as option A.
    cue = re.search(r"(?i:answer)\s*(?i:is|:)?\s*[:\-]?\s*(?i:option\s*)?"
                    r"(?:[(\[]([A-Fa-f])[)\]]|([A-F])\b|([a-f])(?=[.)]|\s*$))", text)
    letter = next((g for g in cue.groups() if g), None) if cue else None
    if letter and letter.upper() in allowed:
        return letter.upper()
    bracketed = {m.upper() for m in re.findall(r"\(([A-Fa-f])\)", text) if m.upper() in allowed}
    # A leading "B." / "(b)" picks B unless other bracketed letters follow ("(A) (C)" is ambiguous).
    lead = re.match(r"[(\[]?([A-Fa-f])[)\].:](?:\s|$)", text)
    if lead and lead.group(1).upper() in allowed and bracketed <= {lead.group(1).upper()}:
        return lead.group(1).upper()
    if len(bracketed) == 1:
        return bracketed.pop()
    # Standalone capitals; "A" followed by a lower-case word is the article, not an option.
    standalone = {m.group(1) for m in re.finditer(r"(?<![\w'])([A-F])(?![\w'])", text)
                  if m.group(1) in allowed and not _is_article(text[m.start():])}
    if len(standalone) == 1:
        return standalone.pop()
    if standalone or bracketed:
        return None
    texts = [t.lower() for t in option_texts(options)]
    lowered = text.lower().strip(" .")
    hits = [i for i, t in enumerate(texts) if t and (lowered == t or re.search(rf"\b{re.escape(t)}\b", lowered))]
    return LETTERS[hits[0]] if len(hits) == 1 else None


_AFTER_LETTER = {"or", "and", "is", "because", "since", "as", "then", "vs", "versus", "nor", "seems", "with"}


def _is_article(rest: str) -> bool:
    """Whether the "A" that starts `rest` is the article ("A red box"), not option A ("A or B", "A is closer")."""
    word = re.match(r"A\s+([a-z]+)", rest)
    return bool(word) and word.group(1) not in _AFTER_LETTER


def ground_truth_choice(meta_info: Mapping[str, Any]) -> str:
    """The reference letter of a multiple-choice sample; an error names what is wrong with `answer`."""
    answer = meta_info.get("answer")
    letter = extract_choice(str(answer), meta_info.get("options")) if answer is not None else None
    if letter is None:
        raise ValueError(f"multiple_choice meta_info.answer={answer!r} is not an option letter A-F")
    return letter


def choice_accuracy(answer: str, meta_info: Mapping[str, Any]) -> float:
    """1.0 when the answer picks the reference option letter."""
    return float(extract_choice(answer, meta_info.get("options")) == ground_truth_choice(meta_info))


# --- numeric --------------------------------------------------------------------------------------------

_NUMBER_WORDS = {w: float(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
# Metres per unit, so "150 cm" scores against a reference given in metres.
_LENGTH_UNITS = {"mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3, "cm": 1e-2, "centimeter": 1e-2,
                 "centimetre": 1e-2, "m": 1.0, "meter": 1.0, "metre": 1.0, "km": 1e3, "kilometer": 1e3,
                 "kilometre": 1e3, "in": 0.0254, "inch": 0.0254, "inches": 0.0254, "ft": 0.3048, "foot": 0.3048,
                 "feet": 0.3048}
# Thousands commas ("1,234.5"), a decimal comma ("2,5"), plain and signed decimals, then an optional unit word.
_NUMBER = re.compile(r"(?<![\w.,])([-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+,\d{1,2}(?![\d,])|\d+(?:\.\d+)?"
                     r"|\.\d+))(?:\s*([a-zA-Z]+))?")


def _unit_scale(unit: str | None) -> float | None:
    if not unit:
        return None
    unit = unit.lower().strip().rstrip(".")
    return _LENGTH_UNITS.get(unit) or _LENGTH_UNITS.get(unit.rstrip("s"))


def extract_number(answer: str, unit: str | None = None) -> float | None:
    """The number an answer gives: the one after "answer is" when present, else the last one. Thousands commas
    ("1,234") are removed; a length unit written after it ("150 cm") is converted into `unit` when both are
    lengths; small number words ("three") count."""
    text = answer.strip()
    if not text:
        return None
    cue = re.search(r"answer\s*(?:is|:)\s*", text, re.IGNORECASE)
    scope = text[cue.end():] if cue else text
    matches = list(_NUMBER.finditer(scope))
    if not matches:
        words = re.findall(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", scope.lower())
        return _NUMBER_WORDS[words[0 if cue else -1]] if words else None
    match = matches[0] if cue else matches[-1]
    digits = match.group(1)
    value = float(digits.replace(",", ".") if re.fullmatch(r"[-+]?\d+,\d{1,2}", digits) else digits.replace(",", ""))
    written, wanted = _unit_scale(match.group(2)), _unit_scale(unit)
    if written is not None and wanted is not None:
        value = value * written / wanted
    return value


def relaxed_numeric_accuracy(prediction: float | None, target: float, tolerance: float = RELATIVE_TOLERANCE) -> float:
    """1.0 when `prediction` is within `tolerance` (relative) of `target`; a zero target needs an exact zero."""
    if prediction is None or not math.isfinite(prediction):
        return 0.0
    if target == 0:
        return float(prediction == 0)
    return float(abs(prediction - target) <= tolerance * abs(target))


def numeric_accuracy(answer: str, meta_info: Mapping[str, Any]) -> float:
    """Relaxed numeric accuracy of an answer against `meta_info["answer"]` (in `meta_info["unit"]`)."""
    try:
        target = float(str(meta_info.get("answer")).replace(",", ""))
    except ValueError as err:
        raise ValueError(f"numeric meta_info.answer={meta_info.get('answer')!r} is not a number") from err
    return relaxed_numeric_accuracy(extract_number(answer, meta_info.get("unit")), target)


# --- overall --------------------------------------------------------------------------------------------

_ACCURACY = {"multiple_choice": choice_accuracy, "numeric": numeric_accuracy, "bbox3d": bbox3d_accuracy}


def vst_modes(meta_info: Mapping[str, Any]) -> list[str] | None:
    """The row's VST score names when `meta_info["mode"]` is a list (VST's RL rows), None for our own mode string;
    a ValueError names a mode that is neither."""
    mode = meta_info.get("mode")
    if isinstance(mode, str):
        if mode not in MODES:
            raise ValueError(f"meta_info.mode={mode!r} is not one of {', '.join(MODES)} nor a list of {VST_MODES}")
        return None
    if not isinstance(mode, Sequence) and not hasattr(mode, "tolist"):
        raise ValueError(f"meta_info.mode={mode!r}: give one of {', '.join(MODES)} or a list of {VST_MODES}")
    modes = [str(m) for m in (mode.tolist() if hasattr(mode, "tolist") else mode)]
    if "bbox3d" not in modes:
        check_modes(modes)
    return modes


def is_scorable(meta_info: Mapping[str, Any]) -> bool:
    """Whether `vst_reward` can score a row with this `meta_info` (a known mode and an answer)."""
    try:
        vst_modes(meta_info)
    except ValueError:
        return False
    return meta_info.get("answer") is not None


def is_box_row(meta_info: Mapping[str, Any]) -> bool:
    """Whether a row is 3D detection (VST gives those no think prompt and scores their JSON format)."""
    mode = meta_info.get("mode")
    return mode == "bbox3d" or (not isinstance(mode, str) and mode is not None and "bbox3d" in list(mode))


def accuracy_reward(completion: str, meta_info: Mapping[str, Any]) -> float:
    """Accuracy of `completion` against `meta_info["answer"]`, by the row's mode(s)."""
    modes = vst_modes(meta_info)
    if modes is not None:
        if "bbox3d" in modes:  # VST scores the whole completion on boxes, with no exact-match shortcut
            return bbox3d_accuracy(completion, meta_info)
        return vst_accuracy(completion, str(meta_info.get("answer", "")), modes)
    _, answer = split_answer(completion)
    return _ACCURACY[meta_info["mode"]](answer, meta_info) if answer else 0.0


def format_score(completion: str, meta_info: Mapping[str, Any] | None = None, require_think: bool = True) -> float:
    """The format reward of a row: VST's JSON box format for its 3D-detection rows, else `format_reward`."""
    if meta_info is not None and vst_modes(meta_info) is not None and is_box_row(meta_info):
        return box_format_reward(completion)
    return format_reward(completion, require_think=require_think)


def vst_reward(completion: str, meta_info: Mapping[str, Any], w_acc: float = 0.5, w_fmt: float = 0.5,
               require_think: bool = True) -> dict[str, float]:
    """The reward with its components: `{"overall", "accuracy", "format"}`, overall = w_acc * accuracy + w_fmt *
    format (VST: 0.5 / 0.5). `require_think`: whether the think prompt was used for this row."""
    accuracy = accuracy_reward(completion, meta_info)
    fmt = format_score(completion, meta_info, require_think=require_think)
    return {"overall": w_acc * accuracy + w_fmt * fmt, "accuracy": accuracy, "format": fmt}


def parse_meta_info(meta_info: Any) -> dict[str, Any]:
    """`meta_info` as a dict (VST parquet files store it as a JSON string)."""
    if isinstance(meta_info, Mapping):
        return dict(meta_info)
    if isinstance(meta_info, str):
        return json.loads(meta_info) if meta_info.strip() else {}
    raise TypeError(f"meta_info must be a dict or a JSON string, got {type(meta_info).__name__}")
