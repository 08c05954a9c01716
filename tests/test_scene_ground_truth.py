"""Ground truth of scenes: a hand-built scene with answers computed by hand, generated scenes, MetaWorld."""

from __future__ import annotations

import math
from pathlib import Path

import mujoco
import numpy as np
import pytest

from sim.camera import CameraPose, relative_motion
from sim.ground_truth import GroundTruthRenderer, bbox3d_corners, body_object_boxes, vst_box
from sim.procedural_scene import Scene, SceneObject, generate_scene

SIZE = 128
FOVY = 60.0


@pytest.fixture(scope="module")
def hand_scene():
    """A level camera at (0, -1, 0.05) looking along +y: camera X = world x, Y = -world z, Z = world y."""
    objects = [
        SceneObject("red", "box", (0.05, 0.05, 0.05), (0.0, 0.0, 0.05)),
        SceneObject("blue", "sphere", (0.04,), (0.3, -0.3, 0.04)),
        SceneObject("green", "cylinder", (0.03, 0.1), (-0.3, 0.2, 0.1)),
        SceneObject("yellow", "box", (0.03, 0.03, 0.03), (0.0, 0.4, 0.03)),  # hidden behind the red cube
    ]
    camera = CameraPose.look_at("front", (0.0, -1.0, 0.05), (0.0, 0.0, 0.05), FOVY, SIZE, SIZE)
    scene = Scene("hand", objects, [camera])
    model, data = scene.build()
    boxes = body_object_boxes(model, data, scene.bodies)
    with GroundTruthRenderer(model, SIZE, SIZE) as renderer:
        view = renderer.view(data, "front", boxes)
    return scene, boxes, view


def test_camera_pose_matches_mujoco(hand_scene):
    _scene, _, view = hand_scene
    assert np.allclose(view.camera.rotation, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-6)
    assert np.allclose(view.camera.position, [0.0, -1.0, 0.05])
    assert view.camera.focal == pytest.approx(64 / math.tan(math.radians(30)))


def test_hand_scene_boxes_depths_and_sizes(hand_scene):
    _, boxes, view = hand_scene
    gt = view.objects
    assert gt["red cube"].bbox_3d == pytest.approx([0, 0, 1.0, 0.1, 0.1, 0.1, 0, 0, 0], abs=1e-3)
    assert gt["blue sphere"].bbox_3d[:6] == pytest.approx([0.3, 0.01, 0.7, 0.08, 0.08, 0.08], abs=1e-3)
    # Height is y_size: the cylinder is 0.2 m tall and 0.06 m wide.
    assert gt["green cylinder"].bbox_3d[:6] == pytest.approx([-0.3, -0.05, 1.2, 0.06, 0.2, 0.06], abs=1e-3)
    depth_order = sorted(gt, key=lambda k: gt[k].depth)
    assert depth_order == ["blue sphere", "red cube", "green cylinder", "yellow cube"]
    by_label = {b.label: b for b in boxes}
    distance = np.linalg.norm(by_label["red cube"].center - by_label["blue sphere"].center)
    assert distance == pytest.approx(math.sqrt(0.3**2 + 0.3**2 + 0.01**2), abs=1e-6)
    assert by_label["green cylinder"].height == pytest.approx(0.2)
    assert max(by_label, key=lambda k: by_label[k].height) == "green cylinder"
    # Directions in the camera frame: blue is right of red, green is left and above red's centre.
    assert gt["blue sphere"].center_camera[0] > 0 > gt["green cylinder"].center_camera[0]
    assert gt["green cylinder"].center_camera[1] < gt["red cube"].center_camera[1]


def test_projection_matches_the_render(hand_scene):
    _, _, view = hand_scene
    f = view.camera.focal
    half = f * 0.05 / 0.95  # the red cube's front face is 0.95 m away
    assert view.objects["red cube"].bbox_2d == pytest.approx([64 - half, 64 - half, 64 + half, 64 + half], abs=0.1)
    for label, obj in view.objects.items():
        if obj.visible_bbox_2d is None:
            continue
        x0, y0, x1, y1 = obj.bbox_2d
        vx0, vy0, vx1, vy1 = obj.visible_bbox_2d
        # The segmentation render agrees with the projection to a pixel.
        assert x0 - 1 <= vx0 and y0 - 1 <= vy0 and vx1 <= x1 + 1 and vy1 <= y1 + 1, label
        corners = np.clip(view.camera.project(bbox3d_corners(obj.bbox_3d)), 0, SIZE)  # bbox_2d is clipped
        # bbox_2d is rounded to 0.1 px and bbox_3d to 1 mm, hence the half-pixel tolerance.
        assert (corners >= [x0 - 0.5, y0 - 0.5]).all() and (corners <= [x1 + 0.5, y1 + 0.5]).all(), label
    mask_rows, mask_cols = np.nonzero(view.segmentation == 0)
    assert abs(mask_cols.mean() - 64) < 1 and abs(mask_rows.mean() - 64) < 1  # the cube is centred


def test_occluded_object_is_reported_occluded(hand_scene):
    _, _, view = hand_scene
    assert view.objects["yellow cube"].amodal_pixels > 10  # ~4.8 px wide alone at 1.4 m
    assert view.objects["yellow cube"].visible_fraction < 0.05
    for label in ("red cube", "blue sphere", "green cylinder"):
        assert view.objects[label].visible_fraction > 0.95 and view.objects[label].in_frame, label


def test_bbox3d_corners_inverts_vst_box():
    rng = np.random.default_rng(0)
    scene = generate_scene(rng, "g0", image_size=64)
    model, data = scene.build()
    boxes = body_object_boxes(model, data, scene.bodies)
    for camera in scene.cameras[:3]:
        pose = CameraPose.from_mujoco(model, data, camera.name, 64, 64)
        assert np.allclose(pose.position, camera.position, atol=1e-5)
        assert np.allclose(pose.rotation, camera.rotation, atol=1e-5)
        for box in boxes:
            ours = bbox3d_corners(vst_box(box, pose, decimals=9))
            truth = pose.world_to_camera(box.corners())
            # Same corner set (the order may differ when Euler angles wrap).
            distances = np.linalg.norm(ours[:, None] - truth[None], axis=-1).min(axis=1)
            assert distances.max() < 1e-6, box.label


def test_generated_scene_is_deterministic_and_valid():
    a = generate_scene(np.random.default_rng(3), "g", image_size=64)
    b = generate_scene(np.random.default_rng(3), "g", image_size=64)
    assert a.mjcf() == b.mjcf()
    assert 3 <= len(a.objects) <= 10 and len({o.label for o in a.objects}) == len(a.objects)
    for name, moved in a.info["motions"].items():
        translation, rotation = relative_motion(a.camera(moved["from"]), a.camera(name))
        axis = int(np.argmax(np.abs(translation)))
        words = {0: ("left", "right"), 1: ("up", "down"), 2: ("backward", "forward")}[axis]
        assert np.allclose(rotation, np.eye(3)) and words[int(translation[axis] > 0)] == moved["motion"]
        assert abs(translation[axis]) == pytest.approx(moved["distance"], abs=1e-3)


def test_ground_truth_on_a_metaworld_model():
    import metaworld

    xml = Path(metaworld.__file__).parent / "assets" / "sawyer_xyz" / "sawyer_pick_place_v3.xml"
    model = mujoco.MjModel.from_xml_path(str(xml))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    boxes = body_object_boxes(model, data, {"puck": "obj"})
    assert np.allclose(boxes[0].center, data.body("obj").xpos, atol=0.05)
    with GroundTruthRenderer(model, 96, 96) as renderer:
        view = renderer.view(data, "corner", boxes)
    puck = view.objects["puck"]
    assert puck.visible_pixels > 0 and puck.visible_fraction > 0.5 and puck.depth > 0
    x0, y0, x1, y1 = puck.bbox_2d
    vx0, vy0, vx1, vy1 = puck.visible_bbox_2d
    assert x0 - 1 <= vx0 and y0 - 1 <= vy0 and vx1 <= x1 + 1 and vy1 <= y1 + 1
    with pytest.raises(KeyError, match="no_such_body"):
        body_object_boxes(model, data, ["no_such_body"])
