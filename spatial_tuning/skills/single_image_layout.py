"""Single-image skills about layout: relative direction, height comparison, 2D grounding, 3D boxes, occlusion."""

from __future__ import annotations

import math

import numpy as np

from spatial_tuning.skills.base import BOX_FORMAT, Draft, SceneContext, pick, pick_objects, separated, xyz
from spatial_tuning.skills.registry import register

SCENARIO = "single_image"
QUADRANTS = ("front-left", "front-right", "back-left", "back-right")
# Directions within this angle of an axis are ambiguous between two quadrants, so they are not asked about.
AXIS_MARGIN_DEG = 15.0


@register("relative_direction", SCENARIO)
def relative_direction(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Standing at A facing B, in which quadrant is C (on the table plane, VSI-Bench style)."""
    picked = pick_objects(ctx, rng, need=3, count=3)
    if picked is None:
        return None
    camera, (a, b, c) = picked
    pa, pb, pc = (ctx.boxes[x].center[:2] for x in (a, b, c))
    forward = (pb - pa) / np.linalg.norm(pb - pa)
    right = np.array([forward[1], -forward[0]])  # clockwise from forward, seen from above
    ahead, side = float((pc - pa) @ forward), float((pc - pa) @ right)
    angle = math.degrees(math.atan2(abs(side), abs(ahead)))
    if min(angle, 90 - angle) < AXIS_MARGIN_DEG:
        return None
    answer = f"{'front' if ahead > 0 else 'back'}-{'right' if side > 0 else 'left'}"
    return Draft("relative_direction", SCENARIO, [camera],
                 f"Imagine standing at the {a} and facing the {b}. Is the {c} to your front-left, front-right, "
                 "back-left or back-right?", "multiple_choice",
                 f"On the table plane, facing from the {a} towards the {b}, the {c} is {abs(ahead):.2f} m "
                 f"{'ahead' if ahead > 0 else 'behind'} and {abs(side):.2f} m to the "
                 f"{'right' if side > 0 else 'left'}, so it is {answer}.",
                 options=[answer, *(q for q in QUADRANTS if q != answer)])


@register("height_comparison", SCENARIO)
def height_comparison(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Which of 3-4 objects is the tallest (or shortest)."""
    picked = pick_objects(ctx, rng, need=3, count=(3, 5))
    if picked is None:
        return None
    camera, candidates = picked
    heights = {label: ctx.boxes[label].height for label in candidates}
    tallest = bool(rng.random() < 0.5)
    winner = (max if tallest else min)(heights, key=heights.get)
    if not separated(heights, winner, 0.02):
        return None
    word = "tallest" if tallest else "shortest"
    listing = ", ".join(f"{label} {100 * heights[label]:.1f} cm" for label in candidates)
    return Draft("height_comparison", SCENARIO, [camera], f"Which of these objects is the {word}?",
                 "multiple_choice", f"Heights above the table: {listing}. The {winner} is the {word}.",
                 options=[winner, *(c for c in candidates if c != winner)])


def _box_text(box: list[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


@register("grounding_2d", SCENARIO)
def grounding_2d(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Which pixel box [x1, y1, x2, y2] encloses a named object (candidates are other objects' boxes)."""
    picked = pick_objects(ctx, rng, need=3, count=4)
    if picked is None:
        return None
    camera, candidates = picked
    target = candidates[0]
    boxes = {label: _box_text(ctx.obj(camera, label).visible_bbox_2d) for label in candidates}
    if len(set(boxes.values())) < len(boxes):
        return None
    width = ctx.views[camera].camera.width
    x1, y1, x2, y2 = ctx.obj(camera, target).visible_bbox_2d
    return Draft("grounding_2d", SCENARIO, [camera],
                 f"Which bounding box [x1, y1, x2, y2] (in pixels of this {width}-pixel image) tightly encloses "
                 f"the {target}?", "multiple_choice",
                 f"The {target} covers pixels from x={x1} to x={x2} and from y={y1} to y={y2}, which is the box "
                 f"{boxes[target]}.",
                 options=[boxes[target], *(boxes[c] for c in candidates[1:])], extra={"target": target})


def _rounded_box(values: list[float]) -> list[float]:
    return [round(float(v), 2) for v in values]


@register("bbox3d_detection", SCENARIO)
def bbox3d_detection(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """The 3D boxes (VST convention, camera frame) of 1-3 named objects."""
    picked = pick_objects(ctx, rng, need=1, count=(1, 4), min_fraction=0.8)
    if picked is None:
        return None
    camera, targets = picked
    answer = [{"label": label, "bbox_3d": _rounded_box(ctx.obj(camera, label).bbox_3d)} for label in targets]
    names = [f"the {label}" for label in targets]
    names = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    steps = " ".join(f"The {b['label']} is centred at {xyz(b['bbox_3d'][:3])} m, measures "
                     f"{xyz(b['bbox_3d'][3:6])} m and is rotated by {xyz(b['bbox_3d'][6:])} (pitch, yaw, roll)."
                     for b in answer)
    return Draft("bbox3d_detection", SCENARIO, [camera],
                 f"Detect the 3D bounding boxes of {names}. Output {BOX_FORMAT}.", "bbox3d", steps, answer=answer)


@register("occlusion", SCENARIO)
def occlusion(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Which of 3-4 objects is partly hidden behind another one (the others are fully visible)."""
    for index in rng.permutation(len(ctx.single_views)):
        camera = ctx.single_views[index]
        objects = ctx.views[camera].objects
        hidden = [lab for lab, o in objects.items()
                  if o.in_frame and 0.1 <= o.visible_fraction <= 0.8 and o.visible_pixels >= ctx.min_pixels(camera)]
        free = ctx.clear(camera, 0.95)
        if hidden and len(free) >= 2:
            target = pick(rng, hidden, 1)[0]
            others = pick(rng, free, min(len(free), int(rng.integers(2, 4))))
            listing = ", ".join(f"{lab} {100 * objects[lab].visible_fraction:.0f}%" for lab in [target, *others])
            return Draft("occlusion", SCENARIO, [camera],
                         "Which of these objects is partly hidden behind another object?", "multiple_choice",
                         f"Visible share of each object's outline: {listing}. Only the {target} is partly hidden.",
                         options=[target, *others])
    return None
