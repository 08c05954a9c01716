"""Evaluation metrics of the VST paper: exact match for multiple choice, mean relative accuracy (MRA) for
numeric answers as in VSI-Bench, and average precision at IoU 0.15 for 3D detection; plus chance levels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spatial_tuning.geometry3d import box_iou_3d
from spatial_tuning.rewards import bbox3d_scores, normalize_label

# VSI-Bench's thresholds 0.50, 0.55, ..., 0.95 (ten of them).
MRA_THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))
AP_IOU_THRESHOLD = 0.15


def exact_match(predicted: str | None, reference: str) -> float:
    """1.0 when the extracted option letter equals the reference letter."""
    return float(predicted is not None and predicted.strip().upper() == reference.strip().upper())


def mean_relative_accuracy(prediction: float | None, target: float,
                           thresholds: Sequence[float] = MRA_THRESHOLDS) -> float:
    """VSI-Bench's MRA: the fraction of thresholds theta with |pred - target| / |target| <= 1 - theta.

    The comparison is `<=` as in VSI-Bench's released evaluation code. A missing prediction scores 0; a zero
    target is matched only by an exact zero.
    """
    if prediction is None or not np.isfinite(prediction):
        return 0.0
    if target == 0:
        return float(prediction == 0)
    relative_error = abs(prediction - target) / abs(target)
    # Rounded so that e.g. an error of exactly 5 % passes the 0.95 threshold despite binary floating point.
    return float(np.mean([round(relative_error, 12) <= round(1.0 - t, 12) for t in thresholds]))


def _rank_scores(n: int) -> list[float]:
    # VLMs give no confidence: earlier boxes in the answer rank higher.
    return [1.0 / (1 + k) for k in range(n)]


def average_precision_3d(predictions: Sequence[Sequence[Mapping[str, Any]]],
                         references: Sequence[Sequence[Mapping[str, Any]]],
                         iou_threshold: float = AP_IOU_THRESHOLD) -> float:
    """Mean over classes of the all-point interpolated AP of 3D boxes at `iou_threshold`.

    `predictions[i]` and `references[i]` are the boxes (`{"label", "bbox_3d", optional "score"}`) of sample i.
    Predictions are ranked by `score`, else by their order within the answer; each reference box matches at
    most one prediction (greedy by rank, highest IoU). Classes are the normalised reference labels.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} prediction lists for {len(references)} reference lists")
    by_class: dict[str, list[tuple[float, int, list[float]]]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for i, (preds, refs) in enumerate(zip(predictions, references)):
        for ref in refs:
            counts[normalize_label(ref["label"])] += 1
        for pred, rank_score in zip(preds, _rank_scores(len(preds))):
            by_class[normalize_label(pred["label"])].append((float(pred.get("score", rank_score)), i, pred["bbox_3d"]))
    if not counts:
        return float("nan")
    aps = []
    for label, n_refs in counts.items():
        refs_by_sample = {i: [r["bbox_3d"] for r in refs if normalize_label(r["label"]) == label]
                          for i, refs in enumerate(references)}
        used = {i: [False] * len(boxes) for i, boxes in refs_by_sample.items()}
        hits = []
        for _, i, box in sorted(by_class.get(label, []), key=lambda p: -p[0]):
            ious = [box_iou_3d(box, ref) if not used[i][j] else -1.0 for j, ref in enumerate(refs_by_sample[i])]
            best = int(np.argmax(ious)) if ious else -1
            hit = best >= 0 and ious[best] >= iou_threshold
            if hit:
                used[i][best] = True
            hits.append(hit)
        aps.append(_interpolated_ap(np.array(hits, dtype=bool), n_refs))
    return float(np.mean(aps))


def _interpolated_ap(hits: np.ndarray, n_refs: int) -> float:
    """All-point interpolated area under the precision-recall curve."""
    if len(hits) == 0:
        return 0.0
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = np.concatenate([[0.0], tp / n_refs, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


# --- chance levels ---------------------------------------------------------------------------------------


def choice_chance(option_counts: Sequence[int]) -> float:
    """Expected accuracy of a uniformly random letter: mean of 1 / (number of options)."""
    return float(np.mean([1.0 / max(1, n) for n in option_counts])) if option_counts else float("nan")


def numeric_chance(targets: Sequence[float]) -> float:
    """MRA of always answering the skill's mean target (VSI-Bench's frequency baseline for numeric answers)."""
    if not targets:
        return float("nan")
    guess = float(np.mean(targets))
    return float(np.mean([mean_relative_accuracy(guess, t) for t in targets]))


def bbox3d_chance(references: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """AP@15 and mean IoU of answering, for every reference label, the skill's mean box without rotation."""
    boxes = [r["bbox_3d"] for refs in references for r in refs]
    if not boxes:
        return {"ap15": float("nan"), "mean_iou": float("nan")}
    mean_box = np.mean(np.asarray(boxes, dtype=float)[:, :6], axis=0).tolist() + [0.0, 0.0, 0.0]
    guesses = [[{"label": r["label"], "bbox_3d": mean_box} for r in refs] for refs in references]
    mean_iou = float(np.mean([bbox3d_scores(g, r)["mean_iou"] for g, r in zip(guesses, references)]))
    return {"ap15": average_precision_3d(guesses, references), "mean_iou": mean_iou}
