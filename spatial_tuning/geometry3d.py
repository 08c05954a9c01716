"""Oriented 3D boxes in the VST camera-frame format and their exact intersection-over-union.

A box is `[x, y, z, x_size, y_size, z_size, pitch, yaw, roll]`: centre and full extents in metres in the camera
frame (X right, Y down, Z forward), angles normalised to (-1, 1) (times 180 = degrees). The box's rotation is
R = R_y(yaw) @ R_x(pitch) @ R_z(roll) (yaw about the camera's vertical axis, then pitch, then roll), i.e.
scipy's intrinsic "YXZ" Euler sequence; the sizes are measured along the box's own rotated axes.

The intersection of two convex boxes is a convex polytope whose vertices are the corners of each box inside
the other plus the points where each box's edges cross the other's faces; its volume is that of their convex
hull, which is exact (up to floating point), not sampled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.transform import Rotation

_EPS = 1e-9
_SIGNS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))  # 8 corners in local units
# Corner index pairs that differ in exactly one coordinate: the 12 edges.
_EDGES = np.array([(i, j) for i, j in itertools.combinations(range(8), 2)
                   if np.count_nonzero(_SIGNS[i] != _SIGNS[j]) == 1])


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Rotation of a box from its normalised angles (times pi = radians): R_y(yaw) @ R_x(pitch) @ R_z(roll)."""
    return Rotation.from_euler("YXZ", [yaw * math.pi, pitch * math.pi, roll * math.pi]).as_matrix()


def _unpack(box: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.asarray(box, dtype=float)
    if values.shape != (9,):
        raise ValueError(f"a 3D box has 9 numbers [x, y, z, x_size, y_size, z_size, pitch, yaw, roll], got {box!r}")
    if np.any(values[3:6] <= 0):
        raise ValueError(f"3D box sizes must be positive, got {values[3:6].tolist()}")
    return values[:3], values[3:6] / 2.0, rotation_matrix(*values[6:9])


def box_volume(box: Sequence[float]) -> float:
    """Volume of a box in cubic metres."""
    return float(np.prod(np.asarray(box, dtype=float)[3:6]))


def box_corners(box: Sequence[float]) -> np.ndarray:
    """The 8 corners of a box, shape (8, 3), in the camera frame."""
    center, half, rotation = _unpack(box)
    return center + (_SIGNS * half) @ rotation.T


def points_in_box(points: np.ndarray, box: Sequence[float], tolerance: float = 0.0) -> np.ndarray:
    """Boolean mask of `points` (N, 3) that lie inside `box` (within `tolerance` metres of its faces)."""
    center, half, rotation = _unpack(box)
    local = (np.asarray(points, dtype=float) - center) @ rotation
    return np.all(np.abs(local) <= half + tolerance, axis=-1)


def _edge_face_crossings(box_a: Sequence[float], box_b: Sequence[float]) -> np.ndarray:
    """Points where the edges of `box_a` cross the faces of `box_b` and lie on `box_b`'s surface."""
    corners = box_corners(box_a)
    starts, ends = corners[_EDGES[:, 0]], corners[_EDGES[:, 1]]
    center, half, rotation = _unpack(box_b)
    normals = np.concatenate([rotation.T, -rotation.T])  # (6, 3): +x, +y, +z, -x, -y, -z face normals
    offsets = normals @ center + np.concatenate([half, half])
    direction = ends - starts  # (12, 3)
    denom = direction @ normals.T  # (12, 6)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (offsets[None, :] - starts @ normals.T) / denom
    valid = (np.abs(denom) > _EPS) & (t >= -_EPS) & (t <= 1 + _EPS)
    t = np.where(valid, t, 0.0)  # edges parallel to a face give inf / nan; they are masked out anyway
    points = starts[:, None, :] + t[..., None] * direction[:, None, :]
    points = points[valid]
    return points[points_in_box(points, box_b, tolerance=1e-7)] if len(points) else points


def intersection_volume(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Exact volume shared by two oriented boxes."""
    center_a, half_a, rot_a = _unpack(box_a)
    center_b, half_b, rot_b = _unpack(box_b)
    if np.linalg.norm(center_a - center_b) > np.linalg.norm(half_a) + np.linalg.norm(half_b):
        return 0.0  # bounding spheres apart
    if np.allclose(rot_a.T @ rot_b, np.eye(3), atol=1e-9):
        # Same orientation: an axis-aligned overlap in the shared frame.
        offset = (center_b - center_a) @ rot_a
        overlap = np.minimum(half_a, offset + half_b) - np.maximum(-half_a, offset - half_b)
        return float(np.prod(np.clip(overlap, 0.0, None)))
    corners_a, corners_b = box_corners(box_a), box_corners(box_b)
    points = np.concatenate([
        corners_a[points_in_box(corners_a, box_b, tolerance=1e-7)],
        corners_b[points_in_box(corners_b, box_a, tolerance=1e-7)],
        _edge_face_crossings(box_a, box_b),
        _edge_face_crossings(box_b, box_a),
    ])
    if len(points) < 4:
        return 0.0
    try:
        return float(ConvexHull(points).volume)
    except QhullError:  # flat or degenerate contact: no volume
        return 0.0


def box_iou_3d(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two oriented 3D boxes, in [0, 1]."""
    inter = intersection_volume(box_a, box_b)
    union = box_volume(box_a) + box_volume(box_b) - inter
    return float(min(1.0, max(0.0, inter / union))) if union > 0 else 0.0
