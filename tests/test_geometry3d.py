"""Oriented 3D box IoU against independent computations: by hand (axis-aligned) and Monte Carlo (rotated)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatial_tuning.geometry3d import (
    box_corners,
    box_iou_3d,
    box_volume,
    intersection_volume,
    rotation_matrix,
)


@pytest.mark.parametrize("a, b, iou", [
    ([0, 0, 0, 2, 2, 2, 0, 0, 0], [0, 0, 0, 2, 2, 2, 0, 0, 0], 1.0),
    ([0, 0, 0, 2, 2, 2, 0, 0, 0], [1, 1, 1, 2, 2, 2, 0, 0, 0], 1 / 15),     # 1 m^3 shared of 8 + 8 - 1
    ([0, 0, 0, 2, 2, 2, 0, 0, 0], [1, 0, 0, 2, 2, 2, 0, 0, 0], 4 / 12),      # half overlap: 4 / (8 + 8 - 4)
    ([0, 0, 0, 2, 2, 2, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0], 1 / 8),       # nested
    ([0, 0, 0, 2, 2, 2, 0, 0, 0], [3, 0, 0, 2, 2, 2, 0, 0, 0], 0.0),         # apart
    ([0, 0, 0, 2, 2, 2, 0, 0, 0], [2, 0, 0, 2, 2, 2, 0, 0, 0], 0.0),         # touching faces
    ([0, 0, 0, 4, 1, 2, 0, 0.5, 0], [0, 0, 0, 2, 1, 4, 0, 0, 0], 1.0),       # yaw 90 deg swaps x and z sizes
])
def test_iou_by_hand(a, b, iou):
    assert box_iou_3d(a, b) == pytest.approx(iou, abs=1e-9)
    assert box_iou_3d(b, a) == pytest.approx(iou, abs=1e-9)


def test_cube_rotated_45_degrees_about_its_vertical_axis():
    # Unit cubes, one yawed 45 deg: the overlap is a regular octagon prism of area 2(sqrt2 - 1), height 1.
    inter = 2 * (math.sqrt(2) - 1)
    assert intersection_volume([0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0.25, 0]) == pytest.approx(inter)
    assert box_iou_3d([0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0.25, 0]) == pytest.approx(inter / (2 - inter))


def _monte_carlo_intersection(a, b, rng, n=200_000):
    center, half, rotation = np.asarray(a[:3]), np.asarray(a[3:6]) / 2, rotation_matrix(*a[6:])
    points = center + (rng.uniform(-1, 1, (n, 3)) * half) @ rotation.T
    b_center, b_half, b_rotation = np.asarray(b[:3]), np.asarray(b[3:6]) / 2, rotation_matrix(*b[6:])
    local = (points - b_center) @ b_rotation
    return np.all(np.abs(local) <= b_half, axis=1).mean() * box_volume(a)


@pytest.mark.parametrize("seed", range(5))
def test_rotated_boxes_against_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    a = [*rng.normal(0, 0.3, 3), *rng.uniform(0.5, 2, 3), *rng.uniform(-1, 1, 3)]
    b = [*rng.normal(0, 0.3, 3), *rng.uniform(0.5, 2, 3), *rng.uniform(-1, 1, 3)]
    estimate = _monte_carlo_intersection(a, b, rng)
    exact = intersection_volume(a, b)
    # 200k samples: the standard error is well under 1 % of the box volume.
    assert exact == pytest.approx(estimate, abs=0.01 * box_volume(a))
    assert exact == pytest.approx(intersection_volume(b, a), rel=1e-9)


def test_rotation_convention():
    # Yaw turns about the camera's vertical (Y, down) axis: +90 deg takes the box's x axis to -Z.
    assert rotation_matrix(0, 0.5, 0) @ np.array([1, 0, 0]) == pytest.approx(np.array([0, 0, -1]))
    # Pitch turns about X: +90 deg takes the box's y axis to +Z.
    assert rotation_matrix(0.5, 0, 0) @ np.array([0, 1, 0]) == pytest.approx(np.array([0, 0, 1]))
    corners = box_corners([1, 2, 3, 2, 4, 6, 0.1, 0.2, 0.3])
    assert corners.mean(axis=0) == pytest.approx([1, 2, 3])
    distances = sorted(np.linalg.norm(corners - corners[0], axis=1))
    assert distances == pytest.approx(sorted([0, 2, 4, 6, math.sqrt(20), math.sqrt(40), math.sqrt(52), math.sqrt(56)]))


def test_bad_boxes_are_rejected():
    with pytest.raises(ValueError, match="9 numbers"):
        box_iou_3d([0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="positive"):
        box_iou_3d([0, 0, 0, 1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0])
