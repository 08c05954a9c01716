"""Multi-image skills: camera motion between two views, point correspondence, cross-view object relation."""

from __future__ import annotations

import numpy as np

from sim.camera import relative_motion
from sim.procedural_scene import MOTIONS
from spatial_tuning.skills.base import Draft, SceneContext, pick, xyz
from spatial_tuning.skills.registry import register

SCENARIO = "multi_image"
_AXIS_WORDS = {0: ("left", "right"), 1: ("up", "down"), 2: ("backward", "forward")}


@register("camera_motion", SCENARIO)
def camera_motion(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """How the camera moved between two images (a pure translation along one of its axes)."""
    pairs = [(f"view_{name.split('_')[1]}", name) for name in ctx.views if name.startswith("motion_")]
    pairs = [(a, b) for a, b in pairs if a in ctx.views]
    if not pairs:
        return None
    before, after = pairs[int(rng.integers(len(pairs)))]
    first, second = ctx.views[before].camera, ctx.views[after].camera
    translation, _ = relative_motion(first, second)
    axis = int(np.argmax(np.abs(translation)))
    motion = _AXIS_WORDS[axis][int(translation[axis] > 0)]
    distractors = pick(rng, [m for m in MOTIONS if m != motion], 3)
    return Draft("camera_motion", SCENARIO, [before, after],
                 "The two images were taken by the same camera before and after it moved, without turning. "
                 "How did the camera move from Image 1 to Image 2?", "multiple_choice",
                 f"Expressed in the first camera's frame (X right, Y down, Z forward) the camera translated by "
                 f"{xyz(translation)} m; the largest component is along {'XYZ'[axis]}, so it moved {motion} by "
                 f"{abs(translation[axis]):.2f} m.",
                 options=[f"moved {motion}", *(f"moved {m}" for m in distractors)],
                 extra={"translation": [round(float(v), 3) for v in translation]})


def _view_pair(ctx: SceneContext, rng: np.random.Generator) -> tuple[str, str]:
    first, second = pick(rng, ctx.single_views, 2)
    return first, second


def _centroid(ctx: SceneContext, camera: str, label: str) -> tuple[int, int]:
    """A pixel on the object: the centroid of its visible mask."""
    index = list(ctx.views[camera].objects).index(label)
    rows, cols = np.nonzero(ctx.views[camera].segmentation == index)
    return round(float(cols.mean())), round(float(rows.mean()))


@register("correspondence", SCENARIO)
def correspondence(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Which point in Image 2 shows the object under a given point of Image 1."""
    first, second = _view_pair(ctx, rng)
    both = [lab for lab in ctx.clear(first, 0.8) if ctx.is_clear(second, lab, 0.8)]
    if not both:
        return None
    target = pick(rng, both, 1)[0]
    pool = [lab for lab in ctx.clear(second, 0.8) if lab != target]
    if len(pool) < 2:
        return None
    distractors = pick(rng, pool, min(3, len(pool)))
    u, v = _centroid(ctx, first, target)
    points = {lab: _centroid(ctx, second, lab) for lab in [target, *distractors]}
    if len(set(points.values())) < len(points):
        return None
    text = {lab: f"({p[0]}, {p[1]})" for lab, p in points.items()}
    return Draft("correspondence", SCENARIO, [first, second],
                 f"The pixel ({u}, {v}) in Image 1 lies on an object. Which pixel in Image 2 lies on the same "
                 "object? Pixel coordinates are (x, y) from the top-left corner.", "multiple_choice",
                 f"The pixel ({u}, {v}) in Image 1 falls on the {target}. In Image 2 the {target} is seen around "
                 f"{text[target]}.", options=[text[lab] for lab in [target, *distractors]],
                 extra={"target": target})


@register("cross_view_relation", SCENARIO)
def cross_view_relation(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Where object A is relative to object B as seen from the camera of the other image."""
    first, second = _view_pair(ctx, rng)
    labels = [lab for lab in ctx.clear(first) if not ctx.is_unseen(second, lab)]
    if len(labels) < 2:
        return None
    a, b = pick(rng, labels, 2)
    cam = ctx.views[second].camera
    d = (cam.world_to_camera(ctx.boxes[a].center) - cam.world_to_camera(ctx.boxes[b].center))[0]
    lateral, depth = float(d[0]), float(d[2])
    if max(abs(lateral), abs(depth)) < 0.06 or 0.5 < abs(lateral) / max(abs(depth), 1e-6) < 2.0:
        return None  # too close, or diagonal: two answers would be half right
    if abs(lateral) > abs(depth):
        answer = "to the left of" if lateral < 0 else "to the right of"
    else:
        answer = "closer to the camera than" if depth < 0 else "farther from the camera than"
    options = ["to the left of", "to the right of", "closer to the camera than", "farther from the camera than"]
    return Draft("cross_view_relation", SCENARIO, [first, second],
                 f"Image 1 and Image 2 show the same table from two viewpoints. Seen from the camera of Image 2, "
                 f"where is the {a} relative to the {b}?", "multiple_choice",
                 f"In the frame of the camera of Image 2 (X right, Z forward), the {a} minus the {b} is "
                 f"{lateral:.2f} m along X and {depth:.2f} m along Z. The larger offset is along "
                 f"{'X' if abs(lateral) > abs(depth) else 'Z'}, so the {a} is {answer} the {b}.",
                 options=[answer, *(o for o in options if o != answer)])
