"""What every skill shares: the rendered scene it asks about, the question draft it returns, and how a draft
becomes a VST sample (lettered options, plain or `<think>` answer, rule-checkable `meta_info`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.ground_truth import ObjectBox, ObjectView, ViewTruth
from sim.procedural_scene import Scene
from spatial_tuning.sample import SpatialSample

LETTERS = "ABCDEFGH"
SCENARIOS = ("single_image", "multi_image", "video")
MODES = ("multiple_choice", "numeric", "bbox3d")
DATA_SOURCE = "vst_vla_sim"
BOX_FORMAT = ('a JSON list of {"label": name, "bbox_3d": [x, y, z, x_size, y_size, z_size, pitch, yaw, roll]} '
              "in the camera frame (X right, Y down, Z forward; metres; angles divided by 180 degrees)")


@dataclass
class SceneContext:
    """A rendered scene: object boxes in the world and the ground truth of every camera view."""

    scene: Scene
    boxes: dict[str, ObjectBox]
    views: dict[str, ViewTruth]

    @property
    def single_views(self) -> list[str]:
        return [name for name in self.views if name.startswith("view_")]

    @property
    def video_frames(self) -> list[str]:
        return sorted((name for name in self.views if name.startswith("video_")), key=lambda n: int(n.split("_")[1]))

    def min_pixels(self, camera: str) -> int:
        """Pixels an object needs to count as clearly seen (about 0.06 % of the image: 30 px at 224 px)."""
        view = self.views[camera]
        return max(8, int(0.0006 * view.camera.width * view.camera.height))

    def is_clear(self, camera: str, label: str, min_fraction: float = 0.6) -> bool:
        """Whether `label` is clearly seen in `camera`: inside the frame, mostly unoccluded, big enough."""
        obj = self.views[camera].objects[label]
        return obj.in_frame and obj.visible_fraction >= min_fraction and obj.visible_pixels >= self.min_pixels(camera)

    def is_unseen(self, camera: str, label: str) -> bool:
        return self.views[camera].objects[label].visible_pixels == 0

    def clear(self, camera: str, min_fraction: float = 0.6) -> list[str]:
        return [label for label in self.views[camera].objects if self.is_clear(camera, label, min_fraction)]

    def obj(self, camera: str, label: str) -> ObjectView:
        return self.views[camera].objects[label]


@dataclass
class Draft:
    """A question before letters, answer style and ids are chosen. For multiple choice, `options[0]` is the
    correct one; `trace` is the reasoning derived from the ground truth."""

    skill: str
    scenario: str
    cameras: list[str]
    question: str
    mode: str
    trace: str
    options: list[str] | None = None
    answer: Any = None
    unit: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS or self.mode not in MODES:
            raise ValueError(f"skill {self.skill}: bad scenario {self.scenario!r} or mode {self.mode!r}")
        if self.mode == "multiple_choice" and (not self.options or len(set(self.options)) != len(self.options)):
            raise ValueError(f"skill {self.skill}: multiple choice needs distinct options, got {self.options}")


SkillFn = Callable[[SceneContext, np.random.Generator], Draft | None]


def numeric_text(value: float, unit: str) -> str:
    """How a numeric answer is written: "1.25 m", "12.5 cm", "3"."""
    if unit == "m":
        return f"{value:.2f} m"
    if unit == "cm":
        return f"{value:.1f} cm"
    return f"{value:g}"


def boxes_text(boxes: list[dict]) -> str:
    return "```json\n" + json.dumps(boxes) + "\n```"


def image_prefix(scenario: str, count: int) -> str:
    """The placeholders that open a question: one `<image>` per image or video frame."""
    if scenario == "single_image":
        return "<image>\n"
    name = "Image" if scenario == "multi_image" else "Frame"
    head = "" if scenario == "multi_image" else f"These {count} frames come from a video taken by a moving camera.\n"
    return head + "".join(f"{name} {i + 1}: <image>\n" for i in range(count))


def finalize(draft: Draft, *, sample_id: str, scene_id: str, images: list[bytes], thought: bool,
             correct_position: int = 0, rng: np.random.Generator | None = None,
             camera_info: list[dict] | None = None) -> SpatialSample:
    """The VST sample of `draft`: options lettered with the correct one at `correct_position` (the rest in
    an rng-shuffled order), the answer plain or after a `<think>` trace."""
    meta: dict[str, Any] = {"skill": draft.skill, "mode": draft.mode, "scenario": draft.scenario,
                            "scene_id": scene_id, "cameras": camera_info or draft.cameras, **draft.extra}
    question = image_prefix(draft.scenario, len(draft.cameras)) + draft.question
    if draft.mode == "multiple_choice":
        others = list(draft.options[1:])
        if rng is not None:
            others = [others[i] for i in rng.permutation(len(others))]
        ordered = others[:correct_position] + [draft.options[0]] + others[correct_position:]
        lettered = [f"{LETTERS[i]}. {text}" for i, text in enumerate(ordered)]
        answer = LETTERS[correct_position]
        question += "\nOptions:\n" + "\n".join(lettered) + "\nAnswer with the option's letter."
        meta.update(answer=answer, options=lettered)
        trace = f"{draft.trace} So the answer is {answer}. {draft.options[0]}."
    elif draft.mode == "numeric":
        answer = numeric_text(draft.answer, draft.unit)
        meta.update(answer=float(draft.answer), unit=draft.unit)
        trace = draft.trace
    else:
        answer = boxes_text(draft.answer)
        meta.update(answer=draft.answer)
        trace = draft.trace
    reply = f"<think>{trace}</think> {answer}" if thought else answer
    return SpatialSample(id=sample_id, conversations=[{"from": "human", "value": question},
                                                      {"from": "gpt", "value": reply}],
                         images=list(images), type=f"{draft.scenario}_thought" if thought else draft.scenario,
                         data_source=DATA_SOURCE, meta_info=meta)


def pick(rng: np.random.Generator, items: list, k: int) -> list:
    """`k` distinct items of `items` in a random order."""
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def pick_objects(ctx: SceneContext, rng: np.random.Generator, need: int, count: int | tuple[int, int],
                 min_fraction: float = 0.6) -> tuple[str, list[str]] | None:
    """A random single-image view with at least `need` clearly seen objects and a random choice of them: `count`
    of them, or `rng.integers(*count)` for a range (at most as many as are seen); None when no view has enough."""
    for index in rng.permutation(len(ctx.single_views)):
        camera = ctx.single_views[index]
        labels = ctx.clear(camera, min_fraction)
        if len(labels) >= need:
            k = count if isinstance(count, int) else int(rng.integers(*count))
            return camera, pick(rng, labels, min(len(labels), k))
    return None


def separated(values: dict[str, float], winner: str, margin: float) -> bool:
    """Whether `values[winner]` differs from every other value by at least `margin`."""
    return all(abs(values[winner] - v) >= margin for k, v in values.items() if k != winner)


def xyz(v) -> str:
    return "(" + ", ".join(f"{float(c):.2f}" for c in v) + ")"


def scenario_cameras(scene: Scene, scenarios) -> list[str]:
    """The cameras of `scene` that skills of `scenarios` look through."""
    wanted = {"single_image": ("view_",), "multi_image": ("view_", "motion"), "video": ("video_",)}
    prefixes = tuple(p for scenario in scenarios for p in wanted[scenario])
    return [c.name for c in scene.cameras if c.name.startswith(prefixes)]


def render_context(scene: Scene, shadows: bool = False, cameras: list[str] | None = None) -> SceneContext:
    """Render each camera of `scene` (or of `cameras`) once and compute its ground truth; all questions about
    the scene share these renders."""
    from sim.ground_truth import GroundTruthRenderer, body_object_boxes

    model, data = scene.build()
    boxes = body_object_boxes(model, data, scene.bodies)
    names = [c.name for c in scene.cameras] if cameras is None else cameras
    camera = scene.cameras[0]
    with GroundTruthRenderer(model, camera.width, camera.height, shadows=shadows) as renderer:
        views = {name: renderer.view(data, name, boxes) for name in names}
    return SceneContext(scene, {b.label: b for b in boxes}, views)
