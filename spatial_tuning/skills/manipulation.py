"""Manipulation skills: questions about the gripper and the objects in MetaWorld scenes, seen through the policy's
own camera (`corner2`, flipped as the policy sees it), with exact ground truth from the simulator state.

- `gripper_relative_direction`: where an object is relative to the gripper (left / right in the image, above /
  below in height, in front of / behind as closer to / farther from the camera);
- `closer_to_gripper`: which of two objects is closer to the gripper;
- `gripper_object_distance`: how far an object's centre is from the gripper, in centimetres.

The gripper point is MetaWorld's `tcp_center` (between the fingertips); an object's centre is the centre of its
3D box (`sim.ground_truth`). Questions whose answer a person could not tell from the image are not asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.ground_truth import ObjectBox, ObjectView, ViewTruth
from spatial_tuning.skills.base import Draft, pick, xyz
from spatial_tuning.skills.registry import register

SCENARIO = "single_image"
MANIPULATION_SKILLS = ("gripper_relative_direction", "closer_to_gripper", "gripper_object_distance")
MIN_OBJECTS = {"gripper_relative_direction": 1, "closer_to_gripper": 2, "gripper_object_distance": 1}
# An object the gripper can be "left of": a part-sized object, not a shelf or a machine (largest side, metres).
SMALL_OBJECT = 0.25
DIRECTION_MIN = 0.05  # metres along the answer's axis
DIRECTION_MARGIN = 0.03  # metres by which the answer's axis beats the next one
CLOSER_MARGIN = 0.05  # metres between the two distances
MIN_PIXELS = 6
MIN_VISIBLE_FRACTION = 0.3
DIRECTIONS = {
    "right": "to the right of the gripper in the image", "left": "to the left of the gripper in the image",
    "above": "above the gripper (higher)", "below": "below the gripper (lower)",
    "front": "in front of the gripper (closer to the camera)", "behind": "behind the gripper (farther from the camera)",
}


@dataclass
class ManipulationContext:
    """One rendered MetaWorld state: the camera view (image as the policy sees it), object boxes, gripper point."""

    task: str
    camera: str
    view: ViewTruth
    boxes: dict[str, ObjectBox]
    gripper_world: np.ndarray
    flipped: bool  # the image is rotated 180 degrees from the raw camera (MetaWorld's corner2, as LeRobot shows it)

    @property
    def views(self) -> dict[str, ViewTruth]:
        return {self.camera: self.view}

    def obj(self, label: str) -> ObjectView:
        return self.view.objects[label]

    def seen(self, label: str) -> bool:
        """Whether `label` is visible enough in the image to be asked about."""
        obj = self.obj(label)
        return obj.visible_pixels >= MIN_PIXELS and obj.visible_fraction >= MIN_VISIBLE_FRACTION

    def small_seen(self) -> list[str]:
        return [label for label in self.view.objects if self.seen(label)
                and float(self.boxes[label].size.max()) <= SMALL_OBJECT]

    def gripper_camera(self) -> np.ndarray:
        return self.view.camera.world_to_camera(self.gripper_world)[0]


def direction_components(ctx: ManipulationContext, label: str) -> dict[str, float]:
    """Signed offsets of `label`'s centre from the gripper, in metres: rightward in the image, upward in the
    world, and toward the camera."""
    obj_cam, grip_cam = ctx.obj(label).center_camera, ctx.gripper_camera()
    rightward = float(obj_cam[0] - grip_cam[0]) * (-1.0 if ctx.flipped else 1.0)  # camera X points right
    upward = float(ctx.boxes[label].center[2] - ctx.gripper_world[2])
    toward_camera = float(grip_cam[2] - obj_cam[2])
    return {"right": rightward, "left": -rightward, "above": upward, "below": -upward, "front": toward_camera,
            "behind": -toward_camera}


def relative_direction(ctx: ManipulationContext, label: str) -> str | None:
    """The one direction that clearly describes where `label` is from the gripper, or None when none does."""
    offsets = direction_components(ctx, label)
    ranked = sorted(offsets, key=offsets.get, reverse=True)
    best, runner_up = offsets[ranked[0]], offsets[ranked[1]]
    if best < DIRECTION_MIN or best - runner_up < DIRECTION_MARGIN:
        return None
    return ranked[0]


@register("gripper_relative_direction", SCENARIO, scenes="metaworld")
def gripper_relative_direction(ctx: ManipulationContext, rng: np.random.Generator) -> Draft | None:
    """Where an object is relative to the gripper: one of six directions, four options."""
    candidates = ctx.small_seen()
    if not candidates:
        return None
    label = candidates[int(rng.integers(len(candidates)))]
    answer = relative_direction(ctx, label)
    if answer is None:
        return None
    offsets = direction_components(ctx, label)
    distractors = pick(rng, [d for d in DIRECTIONS if d != answer], 3)
    trace = (f"From the gripper to the {label}: {offsets['right'] * 100:+.1f} cm to the right in the image, "
             f"{offsets['above'] * 100:+.1f} cm up, {offsets['front'] * 100:+.1f} cm toward the camera. The largest is "
             f"{DIRECTIONS[answer]}.")
    return Draft("gripper_relative_direction", SCENARIO, [ctx.camera],
                 f"Where is the {label} relative to the robot's gripper?", "multiple_choice", trace,
                 options=[f"The {label} is {DIRECTIONS[d]}" for d in (answer, *distractors)],
                 extra={"task": ctx.task, "image_flipped": ctx.flipped})


def gripper_distance(ctx: ManipulationContext, label: str) -> float:
    """Distance from the gripper point to `label`'s centre, metres."""
    return float(np.linalg.norm(ctx.boxes[label].center - ctx.gripper_world))


@register("closer_to_gripper", SCENARIO, scenes="metaworld")
def closer_to_gripper(ctx: ManipulationContext, rng: np.random.Generator) -> Draft | None:
    """Which of two objects is closer to the gripper (centre distances at least `CLOSER_MARGIN` apart)."""
    seen = [label for label in ctx.view.objects if ctx.seen(label)]
    if len(seen) < 2:
        return None
    a, b = pick(rng, seen, 2)
    da, db = gripper_distance(ctx, a), gripper_distance(ctx, b)
    if abs(da - db) < CLOSER_MARGIN:
        return None
    near, far = (a, b) if da < db else (b, a)
    trace = (f"The gripper is at {xyz(ctx.gripper_world)} m; the {a}'s centre is {da * 100:.1f} cm from it and the "
             f"{b}'s {db * 100:.1f} cm. The {near} is closer.")
    return Draft("closer_to_gripper", SCENARIO, [ctx.camera],
                 f"Which is closer to the robot's gripper, the {a} or the {b}?", "multiple_choice", trace,
                 options=[f"the {near}", f"the {far}"], extra={"task": ctx.task, "image_flipped": ctx.flipped})


@register("gripper_object_distance", SCENARIO, scenes="metaworld")
def gripper_object_distance(ctx: ManipulationContext, rng: np.random.Generator) -> Draft | None:
    """The distance from the gripper to an object's centre, in centimetres."""
    candidates = ctx.small_seen()
    if not candidates:
        return None
    label = candidates[int(rng.integers(len(candidates)))]
    value = round(100 * gripper_distance(ctx, label), 1)
    if value < 1.0:
        return None  # the object is in the hand: relative accuracy of a near-zero answer is meaningless
    center = ctx.boxes[label].center
    trace = (f"The gripper is at {xyz(ctx.gripper_world)} m and the {label}'s centre at {xyz(center)} m; the "
             f"difference is {xyz(center - ctx.gripper_world)} m, whose length is {value:.1f} cm.")
    return Draft("gripper_object_distance", SCENARIO, [ctx.camera],
                 f"How far is the centre of the {label} from the robot's gripper? Answer in centimetres.", "numeric",
                 trace, answer=value, unit="cm", extra={"task": ctx.task, "image_flipped": ctx.flipped})


def render_manipulation_context(state, image_size: int) -> ManipulationContext:
    """Render a posed `sim.manipulation_scene.ManipulationState` from the policy's camera with ground truth."""
    from sim.ground_truth import GroundTruthRenderer, body_object_boxes
    from sim.manipulation_scene import CAMERA
    from sim.metaworld_env import is_flipped

    boxes = body_object_boxes(state.model, state.data, state.objects)
    with GroundTruthRenderer(state.model, image_size, image_size) as renderer:
        view = renderer.view(state.data, CAMERA, boxes)
    flipped = is_flipped(CAMERA)
    if flipped:
        view.rgb = np.ascontiguousarray(view.rgb[::-1, ::-1])
        view.segmentation = np.ascontiguousarray(view.segmentation[::-1, ::-1])
    return ManipulationContext(state.task, CAMERA, view, {b.label: b for b in boxes}, state.gripper_point(), flipped)
