"""VST rewards as plain functions: format, accuracy by answer mode, and their weighted sum.

Every scorer takes the model's completion text and the sample's `meta_info` (`mode`, `answer`, `options`, `unit`)
and returns its component scores, so RL, evaluation and tests share one implementation:

- format: exactly one `<think>...</think>` block, followed by a non-empty answer;
- accuracy, by `meta_info["mode"]`: `multiple_choice` (letter A-F), `numeric` (relaxed, within 5 %),
  `bbox3d` (0.5 * mean IoU after Hungarian matching + 0.5 * F1 at IoU 0.25);
- overall = w_acc * accuracy + w_fmt * format (0.5 / 0.5 by default).

Accuracy is read from the answer part only (the text after `</think>`), so an answer hidden inside the reasoning
earns nothing. Two bugs of the reference implementation are avoided on purpose: label similarity is a
similarity (1 - normalised edit distance), never the raw distance, and the ground truth (not the prediction)
decides which mode and which options apply.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from spatial_tuning.geometry3d import box_iou_3d

MODES = ("multiple_choice", "numeric", "bbox3d")
LETTERS = "ABCDEF"
RELATIVE_TOLERANCE = 0.05
F1_IOU_THRESHOLD = 0.25

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_FORMAT = re.compile(r"\s*<think>(?P<think>.*?)</think>(?P<answer>.*)", re.DOTALL)


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
    """1.0 for exactly one `<think>...</think>` followed by a non-empty answer, else 0.0. With
    `require_think=False` (think prompt off), 1.0 for a non-empty answer that has no think tags."""
    n_open, n_close = completion.count(_THINK_OPEN), completion.count(_THINK_CLOSE)
    if not require_think:
        return float(n_open == 0 and n_close == 0 and bool(completion.strip()))
    if n_open != 1 or n_close != 1:
        return 0.0
    match = _FORMAT.fullmatch(completion)
    return float(bool(match and match.group("answer").strip()))


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


# --- 3D boxes -------------------------------------------------------------------------------------------


def parse_boxes(text: str) -> list[dict[str, Any]]:
    """3D boxes from a (fenced) JSON list of `{"label", "bbox_3d": [9 numbers]}`; malformed entries are skipped."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        items = json.loads(body[start:end + 1])
    except json.JSONDecodeError:
        # Fall back to the objects one by one, so one broken entry does not void the others.
        items = []
        for chunk in re.findall(r"\{[^{}]*\}", body[start:end + 1]):
            try:
                items.append(json.loads(chunk))
            except json.JSONDecodeError:
                continue
    if isinstance(items, dict):
        items = [items]
    return [box for box in (_as_box(item) for item in items if isinstance(item, Mapping)) if box is not None]


def _as_box(item: Mapping[str, Any]) -> dict[str, Any] | None:
    values = item.get("bbox_3d")
    if not isinstance(values, Sequence) or len(values) != 9:
        return None
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in numbers) or min(numbers[3:6]) <= 0:
        return None
    return {"label": str(item.get("label", "")), "bbox_3d": numbers}


def ground_truth_boxes(meta_info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Reference boxes from `meta_info["answer"]` (a list, or its JSON text)."""
    answer = meta_info.get("answer")
    boxes = parse_boxes(answer) if isinstance(answer, str) else [b for b in map(_as_box, answer or []) if b]
    if answer and not boxes:
        raise ValueError(f"bbox3d meta_info.answer has no valid box: {str(answer)[:120]!r}")
    return boxes


def normalize_label(label: str) -> str:
    return " ".join(label.lower().replace("_", " ").split())


def label_similarity(a: str, b: str) -> float:
    """1 - normalised Levenshtein distance: 1.0 for equal labels, 0.0 for entirely different ones."""
    a, b = normalize_label(a), normalize_label(b)
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def match_boxes(predicted: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                min_label_similarity: float = 0.8) -> list[tuple[int, int, float]]:
    """Hungarian matching maximising total IoU; boxes whose labels are less similar than `min_label_similarity`
    cannot match. Returns `(pred_index, ref_index, iou)` for matched pairs with IoU > 0."""
    if not predicted or not reference:
        return []
    iou = np.zeros((len(predicted), len(reference)))
    for i, p in enumerate(predicted):
        for j, r in enumerate(reference):
            if label_similarity(p["label"], r["label"]) >= min_label_similarity:
                iou[i, j] = box_iou_3d(p["bbox_3d"], r["bbox_3d"])
    rows, cols = linear_sum_assignment(-iou)
    return [(int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols) if iou[i, j] > 0]


def bbox3d_scores(predicted: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                  iou_threshold: float = F1_IOU_THRESHOLD) -> dict[str, float]:
    """`mean_iou` (matched IoU summed over max(#pred, #ref)), `f1` at `iou_threshold`, and `score` = their mean."""
    if not predicted and not reference:
        return {"mean_iou": 1.0, "f1": 1.0, "score": 1.0}
    matches = match_boxes(predicted, reference)
    mean_iou = sum(m[2] for m in matches) / max(len(predicted), len(reference))
    true_positives = sum(1 for m in matches if m[2] >= iou_threshold)
    f1 = 2 * true_positives / (len(predicted) + len(reference))
    return {"mean_iou": mean_iou, "f1": f1, "score": 0.5 * mean_iou + 0.5 * f1}


def bbox3d_accuracy(answer: str, meta_info: Mapping[str, Any]) -> float:
    """0.5 * mean IoU after Hungarian matching + 0.5 * F1 at IoU 0.25."""
    return bbox3d_scores(parse_boxes(answer), ground_truth_boxes(meta_info))["score"]


# --- overall --------------------------------------------------------------------------------------------

_ACCURACY = {"multiple_choice": choice_accuracy, "numeric": numeric_accuracy, "bbox3d": bbox3d_accuracy}


def accuracy_reward(completion: str, meta_info: Mapping[str, Any]) -> float:
    """Accuracy of the answer part of `completion`, scored by the ground truth's `meta_info["mode"]`."""
    mode = meta_info.get("mode")
    if mode not in _ACCURACY:
        raise ValueError(f"meta_info.mode={mode!r} is not one of {', '.join(MODES)}")
    _, answer = split_answer(completion)
    return _ACCURACY[mode](answer, meta_info) if answer else 0.0


def vst_reward(completion: str, meta_info: Mapping[str, Any], w_acc: float = 0.5, w_fmt: float = 0.5,
               require_think: bool = True) -> dict[str, float]:
    """The VST reward with its components: `{"overall", "accuracy", "format"}`."""
    accuracy = accuracy_reward(completion, meta_info)
    fmt = format_reward(completion, require_think=require_think)
    return {"overall": w_acc * accuracy + w_fmt * fmt, "accuracy": accuracy, "format": fmt}


def parse_meta_info(meta_info: Any) -> dict[str, Any]:
    """`meta_info` as a dict (VST parquet files store it as a JSON string)."""
    if isinstance(meta_info, Mapping):
        return dict(meta_info)
    if isinstance(meta_info, str):
        return json.loads(meta_info) if meta_info.strip() else {}
    raise TypeError(f"meta_info must be a dict or a JSON string, got {type(meta_info).__name__}")
