"""The LIBERO evaluation protocol the anchors report, as data: suites, step limits, waits, keys, conversions.

Sources (read 2026-12):
- openpi `examples/libero/main.py`: max steps 220 / 280 / 300 / 520 / 400 (libero_spatial / object / goal /
  10 / 90, "longest training demo + margin"), 10 no-op wait steps `[0]*6 + [-1]` after setting the official
  init state (not counted in the budget), images rotated 180 degrees (`img[::-1, ::-1]`), state
  `eef_pos (3) + axis-angle(eef_quat) (3) + gripper_qpos (2)`, episode `i` of a task from init state `i`,
  success when the env reports `done`.
- LeRobot 0.6.1 `lerobot/envs/libero.py` + `processor/env_processor.py` (`LiberoProcessorStep`): the same wait
  and rotation, cameras mapped to `observation.images.image` (agent view) and `observation.images.image2`
  (wrist), the same 8-D `observation.state`; its step limits differ only for libero_spatial (280, not 220).
The datasets LeRobot trains its LIBERO policies on (`HuggingFaceVLA/libero`) carry those keys, 7-D actions
(OSC_POSE deltas, gripper -1 open / +1 close) and 8-D state.
"""

from __future__ import annotations

import math

import numpy as np

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# openpi's limits (policy steps after the wait); LeRobot uses 280 for libero_spatial, the rest agree.
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                   "libero_90": 400}
NUM_STEPS_WAIT = 10
NOOP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0], dtype=np.float64)  # gripper -1: open
CONTROL_FPS = 20  # robosuite's control frequency in LIBERO (LeRobot's LiberoEnv fps)
ACTION_DIM = 7
STATE_DIM = 8
ACTION_NAMES = ["x", "y", "z", "rot_x", "rot_y", "rot_z", "gripper"]
STATE_NAMES = ["eef_pos_x", "eef_pos_y", "eef_pos_z", "eef_axisangle_x", "eef_axisangle_y", "eef_axisangle_z",
               "gripper_qpos_0", "gripper_qpos_1"]
# robosuite camera -> LeRobot image key suffix (LeRobot's default `camera_name_mapping`).
CAMERA_KEYS = {"agentview": "image", "robot0_eye_in_hand": "image2"}


def image_key(camera: str) -> str:
    """The LeRobot observation key of a LIBERO camera (`agentview` -> `observation.images.image`)."""
    if camera not in CAMERA_KEYS:
        raise ValueError(f"unknown LIBERO camera {camera!r}; cameras: {', '.join(CAMERA_KEYS)}")
    return f"observation.images.{CAMERA_KEYS[camera]}"


def rotate_180(image: np.ndarray) -> np.ndarray:
    """LIBERO renders upside down (OpenGL's bottom-left origin); flip height and width, as the anchors do."""
    return np.ascontiguousarray(image[::-1, ::-1])


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's `quat2axisangle` (x, y, z, w quaternion -> axis * angle), the state openpi and LeRobot use."""
    quat = np.asarray(quat_xyzw, dtype=np.float64).copy()
    quat[3] = min(1.0, max(-1.0, quat[3]))
    den = math.sqrt(1.0 - quat[3] * quat[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * math.acos(quat[3]) / den


def state_vector(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
    """The 8-D `observation.state` from a robosuite observation: eef position, axis-angle, gripper qpos."""
    return np.concatenate([raw_obs["robot0_eef_pos"], quat_to_axis_angle(raw_obs["robot0_eef_quat"]),
                           raw_obs["robot0_gripper_qpos"]]).astype(np.float32)


def max_steps(suite: str) -> int:
    """The policy-step budget of a suite (openpi's published limits)."""
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; suites: {', '.join(SUITES)}")
    return SUITE_MAX_STEPS[suite]
