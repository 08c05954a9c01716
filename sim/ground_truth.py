"""Exact per-camera ground truth of the objects in any MuJoCo model, given the bodies of interest.

For each object: its oriented 3D box (from its geoms' extents in the body frame), and per camera the box in
the VST convention `[x, y, z, x_size, y_size, z_size, pitch, yaw, roll]` (camera frame, metres, angles / pi),
depth, the amodal 2D box (projected 3D box), the visible 2D box and visible fraction from segmentation
renders (the object alone vs. in the scene, so occlusion is measured, not guessed).

Box-angle convention: the box frame maps the object's local (x, z, y) axes to camera-like (X, -Y, Z) axes,
so an upright object seen by a level camera has angles near 0 and `y_size` is its height; the rotation of the
box frame in the camera frame is `Ry(yaw) @ Rx(pitch) @ Rz(roll)` (scipy intrinsic "YXZ").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Self

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from sim.camera import CameraPose

# Columns: the box frame's axes in the object's local frame (object x, -object z, object y).
_LOCAL_TO_BOX = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
# Geom groups MuJoCo shows by default; higher groups usually hold collision-only geoms.
VISIBLE_GROUPS = (0, 1, 2)
_ISOLATE_GROUP = 5


@dataclass
class ObjectBox:
    """An object's oriented box in the world: centre, rotation (local axes as columns), full local extents."""

    label: str
    body: str
    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray  # full extents along the local x, y, z axes
    geom_ids: list[int] = field(default_factory=list)

    def corners(self) -> np.ndarray:
        """The 8 world-frame corners."""
        return self.center + (_CORNER_SIGNS * self.size / 2.0) @ self.rotation.T

    @property
    def height(self) -> float:
        """Vertical extent in the world (metres)."""
        z = self.corners()[:, 2]
        return float(z.max() - z.min())


@dataclass
class ObjectView:
    """One object seen by one camera."""

    label: str
    bbox_3d: list[float]
    center_camera: np.ndarray
    depth: float
    bbox_2d: list[float] | None  # amodal: the projected 3D box, clipped to the image; None when out of view
    visible_bbox_2d: list[int] | None  # from the segmentation render; None when no pixel is visible
    visible_pixels: int
    amodal_pixels: int
    in_frame: bool  # every corner of the 3D box projects inside the image (not truncated by the border)

    @property
    def visible_fraction(self) -> float:
        """Visible pixels over the pixels the object covers alone in this image (1 = unoccluded)."""
        return self.visible_pixels / self.amodal_pixels if self.amodal_pixels else 0.0


@dataclass
class ViewTruth:
    """A rendered camera view with the ground truth of every object in it."""

    camera: CameraPose
    rgb: np.ndarray
    segmentation: np.ndarray  # (H, W) object index, -1 for background
    objects: dict[str, ObjectView]


def body_object_boxes(model, data, bodies: dict[str, str] | list[str]) -> list[ObjectBox]:
    """Oriented boxes of the named bodies (with their subtrees' visible geoms), labelled by `bodies`' keys
    (a list uses the body names as labels). Needs `mj_forward` to have run."""
    labelled = bodies if isinstance(bodies, dict) else {name: name for name in bodies}
    boxes = []
    for label, body in labelled.items():
        body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
        if body_id < 0:
            raise KeyError(f"body {body!r} (object {label!r}) not in the model")
        boxes.append(_body_box(model, data, label, body, body_id))
    return boxes


def _subtree(model, body_id: int) -> set[int]:
    ids = {body_id}
    for b in range(model.nbody):
        parent = b
        while parent > 0 and parent not in ids:
            parent = model.body_parentid[parent]
        if parent in ids:
            ids.add(b)
    return ids


def _body_box(model, data, label: str, body: str, body_id: int) -> ObjectBox:
    bodies = _subtree(model, body_id)
    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies
             and model.geom_group[g] in VISIBLE_GROUPS and model.geom_rgba[g][3] > 0]
    if not geoms:
        raise ValueError(f"body {body!r} (object {label!r}) has no visible geoms")
    body_rot, body_pos = data.xmat[body_id].reshape(3, 3), data.xpos[body_id]
    points = []
    for g in geoms:
        center, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
        local = center + _CORNER_SIGNS * half  # corners in the geom frame
        world = local @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g]
        points.append((world - body_pos) @ body_rot)  # into the body frame
    points = np.concatenate(points)
    lo, hi = points.min(axis=0), points.max(axis=0)
    center = body_pos + body_rot @ ((lo + hi) / 2.0)
    return ObjectBox(label, body, center, body_rot.copy(), hi - lo, geoms)


def vst_box(box: ObjectBox, camera: CameraPose, decimals: int = 3) -> list[float]:
    """`box` as a VST `bbox_3d` list in `camera`'s frame."""
    center = camera.world_to_camera(box.center)[0]
    rot = camera.rotation.T @ box.rotation @ _LOCAL_TO_BOX
    with warnings.catch_warnings():  # gimbal lock (pitch = +-90 deg, a top-down view) still gives a valid box
        warnings.simplefilter("ignore", UserWarning)
        yaw, pitch, roll = Rotation.from_matrix(rot).as_euler("YXZ")
    sx, sy, sz = box.size
    values = [*center, sx, sz, sy, pitch / math.pi, yaw / math.pi, roll / math.pi]
    return [round(float(v), decimals) for v in values]


def bbox3d_corners(bbox_3d) -> np.ndarray:
    """The 8 camera-frame corners of a VST `bbox_3d` (inverse of `vst_box`; for IoU and drawing)."""
    x, y, z, sx, sy, sz, pitch, yaw, roll = (float(v) for v in bbox_3d)
    rot = Rotation.from_euler("YXZ", [yaw * math.pi, pitch * math.pi, roll * math.pi]).as_matrix()
    return np.array([x, y, z]) + (_CORNER_SIGNS * np.array([sx, sy, sz]) / 2.0) @ rot.T


def _amodal_box(corners_cam: np.ndarray, camera: CameraPose) -> list[float] | None:
    if (corners_cam[:, 2] <= 1e-3).any():
        return None  # partly behind the camera: no meaningful projection
    uv = camera.project(corners_cam)
    x0, y0 = np.clip(uv.min(axis=0), 0, [camera.width, camera.height])
    x1, y1 = np.clip(uv.max(axis=0), 0, [camera.width, camera.height])
    if x1 <= x0 or y1 <= y0:
        return None
    return [round(float(v), 1) for v in (x0, y0, x1, y1)]


def _inside(uv: np.ndarray, camera: CameraPose) -> bool:
    return bool((uv >= 0).all() and (uv[:, 0] <= camera.width).all() and (uv[:, 1] <= camera.height).all())


class GroundTruthRenderer:
    """Renders RGB and segmentation for model cameras and measures each object's visibility."""

    def __init__(self, model, width: int, height: int, shadows: bool = False) -> None:
        self.model, self.width, self.height, self.shadows = model, width, height, shadows
        self._rgb = mujoco.Renderer(model, height, width)
        self._seg = mujoco.Renderer(model, height, width)
        self._seg.enable_segmentation_rendering()

    def close(self) -> None:
        self._rgb.close()
        self._seg.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _update(self, renderer, data, camera: str, option=None) -> None:
        renderer.update_scene(data, camera=camera, scene_option=option)
        # Shadows and reflections cost ~10x on software GL and add nothing to the ground truth.
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.shadows
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False

    def render_rgb(self, data, camera: str) -> np.ndarray:
        self._update(self._rgb, data, camera)
        return self._rgb.render().copy()

    def segment(self, data, camera: str, boxes: list[ObjectBox]) -> np.ndarray:
        """(H, W) map of object indices into `boxes` (-1 where no object is visible)."""
        self._update(self._seg, data, camera)
        seg = self._seg.render()
        lookup = np.full(self.model.ngeom + 1, -1, dtype=np.int32)
        for index, box in enumerate(boxes):
            lookup[box.geom_ids] = index
        ids, types = seg[..., 0], seg[..., 1]
        is_geom = (types == mujoco.mjtObj.mjOBJ_GEOM) & (ids >= 0)
        return np.where(is_geom, lookup[np.where(is_geom, ids, self.model.ngeom)], -1)

    def amodal_pixels(self, data, camera: str, box: ObjectBox) -> int:
        """Pixels `box`'s object covers when rendered alone (only its geoms shown)."""
        saved = self.model.geom_group.copy()
        try:
            self.model.geom_group[box.geom_ids] = _ISOLATE_GROUP
            option = mujoco.MjvOption()
            option.geomgroup[:] = 0
            option.geomgroup[_ISOLATE_GROUP] = 1
            self._update(self._seg, data, camera, option)
            seg = self._seg.render()
        finally:
            self.model.geom_group[:] = saved
        return int(np.isin(seg[..., 0], box.geom_ids).sum())

    def view(self, data, camera: str, boxes: list[ObjectBox]) -> ViewTruth:
        """Render `camera` and compute every object's ground truth in it."""
        pose = CameraPose.from_mujoco(self.model, data, camera, self.width, self.height)
        seg = self.segment(data, camera, boxes)
        objects = {}
        for index, box in enumerate(boxes):
            corners = pose.world_to_camera(box.corners())
            center = pose.world_to_camera(box.center)[0]
            amodal = _amodal_box(corners, pose)
            mask = seg == index
            visible = int(mask.sum())
            vbox = None
            if visible:
                rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
                vbox = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
            full = self.amodal_pixels(data, camera, box) if amodal is not None else 0
            in_frame = amodal is not None and _inside(pose.project(corners), pose)
            objects[box.label] = ObjectView(box.label, vst_box(box, pose), center, float(center[2]), amodal, vbox,
                                            visible, max(full, visible), in_frame)
        return ViewTruth(pose, self.render_rgb(data, camera), seg, objects)
