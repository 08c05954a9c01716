"""Manipulation skills on a hand-posed MetaWorld scene, against ground truth computed here from MuJoCo directly.

The scene is pick-place-wall reset from seed 7 with the gripper at its start (no expert steps). The puck is then
placed at a chosen offset from the gripper point, which is computed here as the midpoint of the two fingertip sites
(MetaWorld's own `tcp_center` definition); the puck is a single cylinder geom centred on its body, and the wall a
single box geom at (0.10, 0.75, 0.06) m, so their centres are read from MuJoCo without our box code.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim.manipulation_scene import CAMERA, pose_state
from spatial_tuning.readers import validate_sample
from spatial_tuning.skills import SKILLS, finalize
from spatial_tuning.skills.manipulation import relative_direction, render_manipulation_context

SIZE = 96


@pytest.fixture(scope="module")
def posed():
    state = pose_state("pick-place-wall", 7, np.random.default_rng(0), SIZE, max_expert_steps=0, free_hand_fraction=0)
    yield state
    state.close()


def fingertips(state) -> np.ndarray:
    d = state.data
    return (d.site("rightEndEffector").xpos + d.site("leftEndEffector").xpos) / 2.0


def place_puck(state, position) -> None:
    """Put the puck's free joint at `position` (world, metres) and recompute the kinematics (no physics step)."""
    joint = state.model.body("obj").jntadr[0]
    adr = state.model.jnt_qposadr[joint]
    state.data.qpos[adr:adr + 3] = position
    mujoco.mj_forward(state.model, state.data)


def camera_axes(state) -> np.ndarray:
    """MuJoCo's camera frame in the world (columns: x right, y up, z backward, i.e. toward the viewer)."""
    return state.data.cam_xmat[state.model.camera(CAMERA).id].reshape(3, 3)


def ask(state, skill: str, seeds=range(30)):
    ctx = render_manipulation_context(state, SIZE)
    return ctx, [d for s in seeds if (d := SKILLS[skill](ctx, np.random.default_rng(s))) is not None]


def test_straight_below_is_below_and_15_cm(posed):
    grip = fingertips(posed)
    place_puck(posed, grip + np.array([0.0, 0.0, -0.15]))
    ctx, drafts = ask(posed, "gripper_relative_direction")
    puck = [d for d in drafts if "puck" in d.question]
    assert puck and all(d.options[0] == "The puck is below the gripper (lower)" for d in puck)
    assert np.allclose(ctx.gripper_world, grip)
    _, distances = ask(posed, "gripper_object_distance")
    assert {d.answer for d in distances if "puck" in d.question} == {15.0}  # |(0, 0, -0.15)| = 15.0 cm


def test_left_and_right_follow_the_flipped_policy_image(posed):
    # corner2 is shown rotated 180 degrees (as LeRobot does), so the camera's -x (its left) is the image's right.
    grip = fingertips(posed)
    left_of_camera = -camera_axes(posed)[:, 0]
    place_puck(posed, grip + 0.12 * left_of_camera)
    ctx, _ = ask(posed, "gripper_relative_direction")
    assert ctx.flipped
    assert relative_direction(ctx, "puck") == "right"
    place_puck(posed, grip - 0.12 * left_of_camera)
    assert relative_direction(render_manipulation_context(posed, SIZE), "puck") == "left"
    _, distances = ask(posed, "gripper_object_distance")
    assert {d.answer for d in distances if "puck" in d.question} == {12.0}


def test_toward_the_camera_is_in_front(posed):
    grip = fingertips(posed)
    place_puck(posed, grip + 0.15 * camera_axes(posed)[:, 2])  # MuJoCo's camera z points back at the viewer
    assert relative_direction(render_manipulation_context(posed, SIZE), "puck") == "front"


def test_closer_object_and_the_row_contract(posed):
    grip = fingertips(posed)
    wall_center = np.array([0.10, 0.75, 0.06])
    place_puck(posed, grip + np.array([0.0, 0.0, -0.08]))  # 8 cm from the gripper
    assert np.linalg.norm(wall_center - grip) > 0.13  # the wall is farther by more than the 5 cm margin
    _, drafts = ask(posed, "closer_to_gripper")
    assert drafts and all(d.options == ["the puck", "the wall"] for d in drafts)
    sample = finalize(drafts[0], sample_id="m0", scene_id="s0", images=[b"\x89PNG"], thought=False,
                      correct_position=1)
    validate_sample(sample, decode_images=False)
    assert sample.conversations[0]["value"].startswith("<image>\n")
    assert sample.meta_info["mode"] == "multiple_choice" and sample.meta_info["answer"] == "B"
    assert sample.meta_info["task"] == "pick-place-wall-v3" and sample.meta_info["image_flipped"] is True


def test_a_puck_in_the_hand_gets_no_distance_question(posed):
    place_puck(posed, fingertips(posed))
    _, drafts = ask(posed, "gripper_object_distance")
    assert not [d for d in drafts if "puck" in d.question]
