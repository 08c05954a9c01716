"""Single-image skills about metric quantities: depth comparison, absolute depth, distance, size, counting."""

from __future__ import annotations

import numpy as np

from spatial_tuning.skills.base import Draft, SceneContext, pick_objects, separated, xyz
from spatial_tuning.skills.registry import register

SCENARIO = "single_image"
# Answers closer than these are not asked about: a person could not tell them apart in the image.
DEPTH_MARGIN = 0.06
COUNT_CATEGORIES = {"box": "box-shaped objects (boxes and cubes)", "sphere": "spheres", "cylinder": "cylinders",
                    "capsule": "capsules"}


@register("depth_comparison", SCENARIO)
def depth_comparison(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """Which of 3-4 objects is closest to (or farthest from) the camera."""
    picked = pick_objects(ctx, rng, need=3, count=(3, 5))
    if picked is None:
        return None
    camera, candidates = picked
    depths = {label: ctx.obj(camera, label).depth for label in candidates}
    closest = bool(rng.random() < 0.5)
    winner = (min if closest else max)(depths, key=depths.get)
    if not separated(depths, winner, DEPTH_MARGIN):
        return None
    word = "closest to" if closest else "farthest from"
    listing = ", ".join(f"{label} {depths[label]:.2f} m" for label in candidates)
    return Draft("depth_comparison", SCENARIO, [camera], f"Which of these objects is {word} the camera?",
                 "multiple_choice", f"Depths of the object centres along the camera's viewing axis: {listing}. "
                 f"The {winner} is {word} the camera.",
                 options=[winner, *(c for c in candidates if c != winner)])


@register("absolute_depth", SCENARIO)
def absolute_depth(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """How far an object's centre is from the camera along the viewing axis, in metres."""
    picked = pick_objects(ctx, rng, need=1, count=1)
    if picked is None:
        return None
    camera, (label,) = picked
    obj = ctx.obj(camera, label)
    value = round(obj.depth, 2)
    return Draft("absolute_depth", SCENARIO, [camera],
                 f"What is the depth of the {label}'s centre, i.e. its distance from the camera along the viewing "
                 "direction? Answer in metres.", "numeric",
                 f"In the camera frame the {label}'s centre is at {xyz(obj.center_camera)} m; its depth is the Z "
                 f"coordinate, {value:.2f} m.", answer=value, unit="m")


@register("object_distance", SCENARIO)
def object_distance(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """The distance between two objects' centres, in metres."""
    picked = pick_objects(ctx, rng, need=2, count=2)
    if picked is None:
        return None
    camera, (a, b) = picked
    pa, pb = ctx.obj(camera, a).center_camera, ctx.obj(camera, b).center_camera
    value = round(float(np.linalg.norm(pa - pb)), 2)
    return Draft("object_distance", SCENARIO, [camera],
                 f"What is the straight-line distance between the centres of the {a} and the {b}? Answer in metres.",
                 "numeric", f"In the camera frame the {a} is at {xyz(pa)} m and the {b} at {xyz(pb)} m. Their "
                 f"difference is {xyz(pa - pb)} m, whose length is {value:.2f} m.", answer=value, unit="m")


@register("object_size", SCENARIO)
def object_size(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """An object's height or longest dimension, in centimetres."""
    picked = pick_objects(ctx, rng, need=1, count=1)
    if picked is None:
        return None
    camera, (label,) = picked
    box = ctx.boxes[label]
    dims = ", ".join(f"{100 * s:.1f}" for s in box.size)
    if rng.random() < 0.5:
        value = round(100 * box.height, 1)
        question, what = f"How tall is the {label}? Answer in centimetres.", "vertical extent (height)"
    else:
        value = round(100 * float(box.size.max()), 1)
        question, what = f"What is the longest dimension of the {label}? Answer in centimetres.", "longest side"
    return Draft("object_size", SCENARIO, [camera], question, "numeric",
                 f"The {label}'s 3D bounding box measures {dims} cm along its own axes; its {what} is {value:.1f} cm.",
                 answer=value, unit="cm")


def shape_category(label: str) -> str:
    shape = label.split(" ", 1)[1]
    return "box" if shape == "cube" else shape


@register("counting", SCENARIO)
def counting(ctx: SceneContext, rng: np.random.Generator) -> Draft | None:
    """How many objects of a shape or colour the image shows (asked only when no member is half-hidden)."""
    camera = ctx.single_views[int(rng.integers(len(ctx.single_views)))]
    labels = list(ctx.views[camera].objects)
    if rng.random() < 0.5:
        key = str(rng.choice(list(COUNT_CATEGORIES)))
        members, noun = [lab for lab in labels if shape_category(lab) == key], COUNT_CATEGORIES[key]
    else:
        key = str(rng.choice(sorted({lab.split(" ")[0] for lab in labels})))
        members, noun = [lab for lab in labels if lab.split(" ")[0] == key], f"{key} objects"
    seen = [lab for lab in members if ctx.is_clear(camera, lab, 0.3)]
    if not seen or any(not ctx.is_unseen(camera, lab) for lab in members if lab not in seen):
        return None  # a partly visible member would make the count ambiguous; zero breaks relative accuracy
    listing = ", ".join(seen)
    return Draft("counting", SCENARIO, [camera], f"How many {noun} are visible in the image? Answer with a number.",
                 "numeric", f"The visible {noun}: {listing}. That makes {len(seen)}.", answer=float(len(seen)),
                 unit="")
