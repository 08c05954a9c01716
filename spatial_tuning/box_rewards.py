"""3D-box rewards: parsing boxes from text, Hungarian matching, 0.5 * mean IoU + 0.5 * F1, and VST's JSON box format.

Boxes are `{"label", "bbox_3d": [x, y, z, x_size, y_size, z_size, pitch, yaw, roll]}` with angles in units of pi,
as VST writes them. Accuracy (this project's, also used for VST rows whose modes include `bbox3d`): predicted and
reference boxes are matched one to one by the Hungarian algorithm on IoU (labels less than 0.8 similar cannot
match); score = 0.5 * (matched IoU summed over max(#pred, #ref)) + 0.5 * F1 at IoU 0.25.

Format for VST's 3D-detection rows (its `iou_reward.format_reward`; those rows get no think prompt): the JSON after
a line that is exactly "```json" (up to the next fence), or the whole completion, parses as a list whose every item
has a `bbox_3d` of 9 values and a `label`.
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
from spatial_tuning.vst_scores import levenshtein

F1_IOU_THRESHOLD = 0.25


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
    """Lower case, underscores as spaces, runs of spaces collapsed (\"Red_Box\" -> \"red box\")."""
    return " ".join(label.lower().replace("_", " ").split())


def label_similarity(a: str, b: str) -> float:
    """1 - normalised Levenshtein distance: 1.0 for equal labels, 0.0 for entirely different ones."""
    a, b = normalize_label(a), normalize_label(b)
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


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


def json_block(completion: str) -> str:
    """VST's `parse_json`: the text between a line that is exactly "```json" and the next fence, else all of it."""
    lines = completion.splitlines()
    for index, line in enumerate(lines):
        if line == "```json":
            return "\n".join(lines[index + 1:]).split("```")[0]
    return completion


def box_format_reward(completion: str) -> float:
    """1.0 when the completion's JSON is a list of objects that each have a 9-value `bbox_3d` and a `label`."""
    try:
        items = json.loads(json_block(completion))
    except json.JSONDecodeError:
        return 0.0
    if not isinstance(items, list):
        return 0.0
    return float(all(isinstance(item, Mapping) and "label" in item and isinstance(item.get("bbox_3d"), list)
                     and len(item["bbox_3d"]) == 9 for item in items))
