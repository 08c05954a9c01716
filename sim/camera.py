"""Pinhole cameras in the VST camera-frame convention (X right, Y down, Z forward, metres).

MuJoCo cameras look along their -Z axis with Y up; `CameraPose` converts once, so everything downstream
(ground truth, questions) works in the VST frame. Intrinsics follow MuJoCo: `fovy` is the vertical field of
view and pixels are square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Flips MuJoCo's camera axes (X right, Y up, looking along -Z) into VST's (X right, Y down, Z forward).
_MUJOCO_TO_VST = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraPose:
    """A camera: `rotation` holds its X/Y/Z axes (VST convention) as columns in world coordinates."""

    name: str
    position: np.ndarray
    rotation: np.ndarray
    fovy: float  # degrees, vertical
    width: int
    height: int
    extras: dict = field(default_factory=dict, compare=False)

    @classmethod
    def look_at(cls, name: str, position, target, fovy: float, width: int, height: int,
                up=(0.0, 0.0, 1.0)) -> CameraPose:
        """A camera at `position` looking at `target`, its image Y axis pointing away from world `up`."""
        position, target = np.asarray(position, float), np.asarray(target, float)
        forward = target - position
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.asarray(up, float))
        if np.linalg.norm(right) < 1e-9:
            raise ValueError(f"camera {name}: looking straight along the up vector")
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        return cls(name, position, np.stack([right, down, forward], axis=1), float(fovy), width, height)

    @classmethod
    def from_mujoco(cls, model, data, camera: str | int, width: int, height: int) -> CameraPose:
        """The pose of a MuJoCo model camera after `mj_forward` (or `mj_kinematics` + `mj_camlight`)."""
        import mujoco

        cam_id = camera if isinstance(camera, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            raise KeyError(f"camera {camera!r} not in the model")
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, cam_id) or f"camera{cam_id}"
        rotation = data.cam_xmat[cam_id].reshape(3, 3) @ _MUJOCO_TO_VST
        return cls(name, data.cam_xpos[cam_id].copy(), rotation, float(model.cam_fovy[cam_id]), width, height)

    @property
    def focal(self) -> float:
        """Focal length in pixels (the same along both axes)."""
        return self.height / (2.0 * math.tan(math.radians(self.fovy) / 2.0))

    def intrinsics(self) -> np.ndarray:
        """The 3x3 pinhole matrix K (pixel coordinates with the origin at the top-left image corner)."""
        f = self.focal
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def world_to_camera(self, points) -> np.ndarray:
        """World points (N, 3) in this camera's VST frame."""
        return (np.asarray(points, float).reshape(-1, 3) - self.position) @ self.rotation

    def camera_to_world(self, points) -> np.ndarray:
        return np.asarray(points, float).reshape(-1, 3) @ self.rotation.T + self.position

    def project(self, points_camera) -> np.ndarray:
        """Pixel coordinates (N, 2) of camera-frame points (which must lie in front of the camera)."""
        p = np.asarray(points_camera, float).reshape(-1, 3)
        uvw = p @ self.intrinsics().T
        return uvw[:, :2] / uvw[:, 2:3]

    def mujoco_xyaxes(self) -> str:
        """The MJCF `xyaxes` attribute of this pose (MuJoCo camera X and Y axes in world coordinates)."""
        x_axis, y_axis = self.rotation[:, 0], -self.rotation[:, 1]
        return " ".join(f"{v:.6f}" for v in (*x_axis, *y_axis))

    def mjcf(self) -> str:
        """An MJCF `<camera>` element placing a fixed camera at this pose."""
        pos = " ".join(f"{v:.6f}" for v in self.position)
        return f'<camera name="{self.name}" pos="{pos}" xyaxes="{self.mujoco_xyaxes()}" fovy="{self.fovy:.4f}"/>'

    def to_dict(self) -> dict:
        """JSON-friendly pose and intrinsics (for `meta_info`)."""
        return {"name": self.name, "position": [round(float(v), 5) for v in self.position],
                "rotation": [[round(float(v), 6) for v in row] for row in self.rotation],
                "fovy": self.fovy, "width": self.width, "height": self.height,
                "intrinsics": [[round(float(v), 4) for v in row] for row in self.intrinsics()]}


def relative_motion(first: CameraPose, second: CameraPose) -> tuple[np.ndarray, np.ndarray]:
    """Translation of `second` expressed in `first`'s frame, and the rotation taking `first`'s axes to
    `second`'s (both in `first`'s frame)."""
    translation = first.rotation.T @ (second.position - first.position)
    return translation, first.rotation.T @ second.rotation
