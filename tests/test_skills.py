"""Skills: answers on a hand-built scene checked against hand-computed values, the row contract on generated
scenes, and the sample forms (multi-image, video frames) through the real Qwen2.5-VL processor."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sim.camera import CameraPose
from sim.procedural_scene import Scene, SceneObject, generate_scene
from spatial_tuning.readers import validate_sample
from spatial_tuning.skills import SKILLS, finalize
from spatial_tuning.skills.base import render_context
from spatial_tuning.skills.registry import SCENARIO_OF, SCENES_OF

SIZE = 96


@pytest.fixture(scope="module")
def hand_ctx():
    """Red cube (10 cm) at the origin, blue sphere (7 cm) at (0.3, -0.3), green cylinder (20 cm) at (-0.25, -0.1).

    view_0 at (0, -1, 0.6) looks at the origin: depths 1.140 (red), 0.890 (blue), 1.028 (green) metres.
    view_1 at (1, 0, 0.6) looks at the origin; `motion_0` is view_0 moved 0.2 m to its right.
    """
    objects = [SceneObject("red", "box", (0.05, 0.05, 0.05), (0.0, 0.0, 0.05)),
               SceneObject("blue", "sphere", (0.035,), (0.3, -0.3, 0.035)),
               SceneObject("green", "cylinder", (0.03, 0.1), (-0.25, -0.1, 0.1))]
    view0 = CameraPose.look_at("view_0", (0.0, -1.0, 0.6), (0, 0, 0), 60.0, SIZE, SIZE)
    view1 = CameraPose.look_at("view_1", (1.0, 0.0, 0.6), (0, 0, 0), 60.0, SIZE, SIZE)
    moved = CameraPose("motion_0", view0.position + 0.2 * view0.rotation[:, 0], view0.rotation, 60.0, SIZE, SIZE)
    return render_context(Scene("hand", objects, [view0, view1, moved]))


def _drafts(skill: str, ctx, seeds=range(40)):
    for seed in seeds:
        draft = SKILLS[skill](ctx, np.random.default_rng(seed))
        if draft is not None:
            yield draft


def test_registry_covers_three_scenarios_with_at_least_14_skills():
    assert len(SKILLS) >= 14
    assert set(SCENARIO_OF.values()) == {"single_image", "multi_image", "video"}


def test_hand_scene_metric_answers(hand_ctx):
    in_view_0 = [d for d in _drafts("depth_comparison", hand_ctx) if d.cameras == ["view_0"]]
    assert next(d for d in in_view_0 if "closest" in d.question).options[0] == "blue sphere"
    assert next(d for d in in_view_0 if "farthest" in d.question).options[0] == "red cube"
    for d in (d for d in _drafts("absolute_depth", hand_ctx, range(10)) if d.cameras == ["view_0"]):
        expected = {"red cube": 1.140, "blue sphere": 0.890, "green cylinder": 1.028}
        label = next(k for k in expected if k in d.question)
        assert d.answer == pytest.approx(expected[label], abs=0.006) and d.unit == "m"
    pairs = {frozenset({"red cube", "blue sphere"}): 0.42, frozenset({"red cube", "green cylinder"}): 0.27,
             frozenset({"blue sphere", "green cylinder"}): 0.59}
    for d in _drafts("object_distance", hand_ctx, range(10)):
        names = frozenset(k for k in ("red cube", "blue sphere", "green cylinder") if k in d.question)
        assert d.answer == pairs[names]
    tall = next(d for d in _drafts("height_comparison", hand_ctx) if "tallest" in d.question)
    short = next(d for d in _drafts("height_comparison", hand_ctx) if "shortest" in d.question)
    assert (tall.options[0], short.options[0]) == ("green cylinder", "blue sphere")
    heights = {"red cube": 10.0, "blue sphere": 7.0, "green cylinder": 20.0}
    for d in _drafts("object_size", hand_ctx, range(10)):
        if "tall" in d.question:
            assert d.answer == heights[next(k for k in heights if k in d.question)]
    assert all(d.answer == 1.0 for d in _drafts("counting", hand_ctx, range(10)))


def test_hand_scene_directions_and_views(hand_ctx):
    question = "standing at the red cube and facing the blue sphere. Is the green cylinder"
    draft = next(d for d in _drafts("relative_direction", hand_ctx, range(200)) if question in d.question)
    assert draft.options[0] == "back-right"  # 0.11 m behind and 0.25 m to the right, worked out by hand
    motion = next(_drafts("camera_motion", hand_ctx))
    assert motion.options[0] == "moved right" and motion.cameras == ["view_0", "motion_0"]
    relation = next(d for d in _drafts("cross_view_relation", hand_ctx, range(200))
                    if d.cameras[1] == "view_1" and "the blue sphere relative to the green cylinder" in d.question)
    assert relation.options[0] == "closer to the camera than"  # view_1 sits at x = 1; blue x = 0.3, green x = -0.25
    box = next(d for d in _drafts("bbox3d_detection", hand_ctx, range(200))
               if d.cameras == ["view_0"] and len(d.answer) == 1 and d.answer[0]["label"] == "red cube")
    assert box.answer[0]["bbox_3d"][3:6] == [0.1, 0.1, 0.1] and box.answer[0]["bbox_3d"][2] == pytest.approx(1.14, abs=0.01)
    grounding = next(_drafts("grounding_2d", hand_ctx))
    target = grounding.extra["target"]
    assert grounding.options[0] == str(hand_ctx.obj(grounding.cameras[0], target).visible_bbox_2d).replace("'", "")


@pytest.fixture(scope="module")
def scene_ctxs():
    return [render_context(generate_scene(np.random.default_rng(s), f"t{s}", image_size=SIZE)) for s in range(6)]


def test_every_skill_yields_valid_rows_with_the_meta_contract(scene_ctxs):
    for name, fn in SKILLS.items():
        if SCENES_OF[name] != "procedural":
            continue  # manipulation skills ask about MetaWorld states (tests/test_manipulation_skills.py)
        produced = 0
        for i, ctx in enumerate(scene_ctxs):
            rng = np.random.default_rng(i)
            draft = fn(ctx, rng)
            if draft is None:
                continue
            produced += 1
            images = [b"\x89PNG-placeholder" for _ in draft.cameras]
            for thought in (False, True):
                n_opts = len(draft.options or [None])
                sample = finalize(draft, sample_id=f"{name}{i}", scene_id=ctx.scene.scene_id, images=images,
                                  thought=thought, correct_position=i % n_opts, rng=rng)
                validate_sample(sample, decode_images=False)
                meta = sample.meta_info
                assert meta["skill"] == name and meta["scene_id"] == ctx.scene.scene_id
                assert meta["mode"] in {"multiple_choice", "numeric", "bbox3d"}
                answer = sample.answer
                if thought:
                    assert "thought" in sample.type and sample.think
                    match = re.fullmatch(r"<think>(.+)</think> (.+)", answer, flags=re.DOTALL)
                    assert match, answer
                    answer = match.group(2)
                if meta["mode"] == "multiple_choice":
                    assert answer == meta["answer"] == "ABCD"[i % n_opts]
                    assert meta["options"][i % n_opts] == f"{meta['answer']}. {draft.options[0]}"
                elif meta["mode"] == "numeric":
                    assert isinstance(meta["answer"], float) and isinstance(meta["unit"], str)
                    assert float(answer.split()[0]) == pytest.approx(meta["answer"])
                else:
                    assert answer.startswith("```json") and all(len(b["bbox_3d"]) == 9 for b in meta["answer"])
        assert produced >= 1, f"skill {name} produced nothing on 6 scenes"


def test_multi_image_and_video_samples_through_the_real_processor(scene_ctxs, tiny_backbone):
    from spatial_tuning.synth import encode_png

    _, processor = tiny_backbone
    for name in ("camera_motion", "appearance_order", "video_counting", "depth_comparison"):
        ctx, draft = next((c, d) for i, c in enumerate(scene_ctxs) for d in [SKILLS[name](c, np.random.default_rng(i))] if d)
        images = [encode_png(ctx.views[c].rgb) for c in draft.cameras]
        sample = finalize(draft, sample_id="p", scene_id="s", images=images, thought=True)
        text = processor.apply_chat_template(sample.messages(), tokenize=False)
        batch = processor(text=[text], images=sample.pil_images(), return_tensors="pt")
        assert batch["image_grid_thw"].shape[0] == len(draft.cameras)
        merge = processor.image_processor.merge_size ** 2
        pads = int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        assert pads == int(batch["image_grid_thw"].prod(dim=1).sum()) // merge


def test_skill_groups_select_by_scene_kind():
    from spatial_tuning.skills.registry import SCENES_OF, select_skills

    procedural, metaworld = select_skills("procedural"), select_skills(["metaworld"])
    assert set(metaworld) == {"gripper_relative_direction", "closer_to_gripper", "gripper_object_distance"}
    assert set(procedural) | set(metaworld) == set(select_skills("all")) and not set(procedural) & set(metaworld)
    assert all(SCENES_OF[name] == "procedural" for name in procedural)
