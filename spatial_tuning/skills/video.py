"""Video skills over a panning camera's frames: appearance order, closest object, object counting."""

from __future__ import annotations

import itertools

import numpy as np

from spatial_tuning.skills.base import Draft, SceneContext, pick
from spatial_tuning.skills.registry import register
from spatial_tuning.skills.single_image import COUNT_CATEGORIES, shape_category

SCENARIO = "video"


def _first_seen(ctx: SceneContext) -> dict[str, int]:
    """Frame index (0-based) where each object is first clearly seen, for objects with no partial sighting
    before that frame (an object glimpsed at the border would make its first appearance ambiguous)."""
    frames = ctx.video_frames
    first: dict[str, int] = {}
    for label in ctx.boxes:
        for k, camera in enumerate(frames):
            if ctx.is_clear(camera, label, 0.5):
                first[label] = k
                break
            if not ctx.is_unseen(camera, label):
                break
    return first


def _ever_seen(ctx: SceneContext) -> tuple[set[str], set[str]]:
    """Objects clearly seen in some frame, and objects glimpsed but never clearly seen."""
    clear = {lab for lab in ctx.boxes if any(ctx.is_clear(c, lab, 0.5) for c in ctx.video_frames)}
    glimpsed = {lab for lab in ctx.boxes if lab not in clear and any(not ctx.is_unseen(c, lab) for c in ctx.video_frames)}
    return clear, glimpsed


@register("appearance_order", SCENARIO)
def appearance_order(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """The order in which three objects first appear (or, when the video has only two appearance times,
    which of 3-4 objects appears first)."""
    first = _first_seen(ctx)
    by_frame: dict[int, list[str]] = {}
    for label, k in first.items():
        by_frame.setdefault(k, []).append(label)
    if len(by_frame) >= 3 and rng.random() < 0.75:
        return _full_order(ctx, rng, first, by_frame)
    if len(by_frame) < 2:
        return None
    start = min(by_frame)
    later = [lab for k, labs in by_frame.items() if k != start for lab in labs]
    if len(later) < 2:
        return None
    winner = pick(rng, by_frame[start], 1)[0]
    others = pick(rng, later, min(len(later), int(rng.integers(2, 4))))
    candidates = pick(rng, [winner, *others], len(others) + 1)
    steps = "; ".join(f"the {lab} first appears in frame {first[lab] + 1}" for lab in [winner, *others])
    return Draft("appearance_order", SCENARIO, ctx.video_frames,
                 f"Which of these objects appears first in the video: {', '.join(candidates)}?", "multiple_choice",
                 f"Going through the frames, {steps}. The {winner} appears first.", options=[winner, *others])


def _full_order(ctx: SceneContext, rng: np.random.Generator, first: dict[str, int],
                by_frame: dict[int, list[str]]) -> Draft:
    frames = sorted(pick(rng, sorted(by_frame), 3))
    order = [pick(rng, by_frame[k], 1)[0] for k in frames]
    wrong = [list(p) for p in itertools.permutations(order) if list(p) != order]
    options = [", ".join(order), *(", ".join(p) for p in pick(rng, wrong, 3))]
    shuffled = pick(rng, order, 3)
    steps = "; ".join(f"the {lab} first appears in frame {first[lab] + 1}" for lab in order)
    return Draft("appearance_order", SCENARIO, ctx.video_frames,
                 f"In which order do these objects first appear in the video: {', '.join(shuffled)}?",
                 "multiple_choice", f"Going through the frames, {steps}.", options=options)


@register("video_closest_object", SCENARIO)
def video_closest_object(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Which of 3-4 objects seen in the video is closest to a reference object (VSI-Bench relative distance)."""
    clear, _ = _ever_seen(ctx)
    labels = [lab for lab in ctx.boxes if lab in clear]
    if len(labels) < 4:
        return None
    reference, *candidates = pick(rng, labels, min(len(labels), int(rng.integers(4, 6))))
    dist = {lab: float(np.linalg.norm(ctx.boxes[lab].center - ctx.boxes[reference].center)) for lab in candidates}
    winner = min(dist, key=dist.get)
    if any(d - dist[winner] < 0.05 for lab, d in dist.items() if lab != winner):
        return None
    listing = ", ".join(f"{lab} {d:.2f} m" for lab, d in dist.items())
    return Draft("video_closest_object", SCENARIO, ctx.video_frames,
                 f"Measuring between object centres, which of these objects is closest to the {reference}?",
                 "multiple_choice", f"Distances from the {reference}: {listing}. The {winner} is the closest.",
                 options=[winner, *(c for c in candidates if c != winner)])


@register("video_counting", SCENARIO)
def video_counting(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """How many distinct objects of a shape appear over the whole video."""
    clear, glimpsed = _ever_seen(ctx)
    key = str(rng.choice(list(COUNT_CATEGORIES)))
    members = [lab for lab in ctx.boxes if shape_category(lab) == key]
    seen = [lab for lab in members if lab in clear]
    if not seen or any(lab in glimpsed for lab in members):
        return None
    noun = COUNT_CATEGORIES[key]
    return Draft("video_counting", SCENARIO, ctx.video_frames,
                 f"How many different {noun} appear in the video? Count each object once. Answer with a number.",
                 "numeric", f"Across the frames the {noun} seen are: {', '.join(seen)}. That makes {len(seen)}.",
                 answer=float(len(seen)), unit="")
