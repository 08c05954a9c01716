"""A scripted pick-and-place expert for LIBERO (libero_spatial, libero_object) from the simulator's poses.

It reads the privileged `observation.environment_state` of `sim.libero_env` (goal object pose, goal target
pose, the box around the object's collision geoms) and the 8-D `observation.state`, and runs one phase
machine per batch row: approach above the grasp point, descend, close, lift, carry above the target, lower,
open, retreat. Actions are LIBERO's 7-D OSC_POSE deltas (position in units of 5 cm per step, rotation in
units of 0.5 rad, gripper -1 open / +1 close), so the expert runs through exactly the evaluation path of a
learned policy (`select_action(batch)`).
Bowls are pinched by the wall (a Panda hand does not span a LIBERO bowl); everything else is grasped from
above near its top, the hand turned so the fingers close across the object's narrower side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

ENV_STATE_KEY = "observation.environment_state"
POS_SCALE = 0.05  # robosuite OSC_POSE: an action of 1 moves the position goal by 5 cm
ROT_SCALE = 0.5  # and the orientation goal by 0.5 rad
GAIN = 1.0  # fraction of the remaining error commanded per step (OSC lags, so this does not overshoot)
TOLERANCE = 0.01  # m: a waypoint is reached
HOVER = 0.12  # m above grasp and place points
CLOSE_STEPS, OPEN_STEPS = 15, 8
PHASE_LIMIT = 40  # steps before a phase gives up waiting for its waypoint and moves on
FINGER_DEPTH = 0.025  # fingertip centre below the object's top (pads are ~2 cm long)
WALL_INSET = 0.007  # bowls: fingertip centre inside the rim's outer edge
RELEASE_ON = 0.025  # object bottom above the target's origin when placing on it (plates are ~1.6 cm tall)
RELEASE_IN = 0.06  # ... when dropping it into a container (a basket's floor is ~1 cm up)
TURN = Rotation.from_euler("z", 90, degrees=True)


def goal_bodies(inner_env: Any) -> tuple[int, int]:
    """MuJoCo body ids of the first goal predicate's object and target (`(On obj target)`/`(In obj region)`).

    A region target (`basket_1_contain_region`) resolves to the body of the object that carries it.
    """
    goals = inner_env.parsed_problem["goal_state"]
    if not goals or len(goals[0]) != 3:
        raise ValueError(f"LIBERO goal {goals!r} is not a binary (On|In object target) predicate")
    _, obj, target = goals[0]
    sites = inner_env.object_sites_dict
    if target in sites:
        target = sites[target].parent_name
    return inner_env.obj_body_id[obj], inner_env.obj_body_id[target]


@dataclass
class _Plan:
    phase: int = 0
    steps_in_phase: int = 0
    orientation: Rotation | None = None  # the hand orientation held throughout
    grasp: np.ndarray = field(default_factory=lambda: np.zeros(3))
    below: float = 0.0  # fingertip height above the object's bottom, fixed at the grasp


def grasp_point(box_low: np.ndarray, box_high: np.ndarray, bowl: bool) -> np.ndarray:
    """Fingertip centre for the grasp: on a bowl's +y wall, else the box centre just below its top."""
    centre, top = (box_low + box_high) / 2, box_high[2]
    if bowl:  # the fingers close along world y in the top-down pose, straddling the +y wall
        return np.array([centre[0], box_high[1] - WALL_INSET, top - FINGER_DEPTH])
    return np.array([centre[0], centre[1], max(top - FINGER_DEPTH, box_low[2] + 0.012)])


class LiberoPickPlaceExpert:
    """Scripted pick-and-place for LIBERO with LeRobot's policy interface (`reset`, `select_action`)."""

    PHASES = ("above_object", "descend", "close", "lift", "above_target", "lower", "open", "retreat")

    def __init__(self, noise_std: float = 0.0, seed: int = 0) -> None:
        self.noise_std = float(noise_std)
        self._rng = np.random.default_rng(int(seed))
        self._plans: list[_Plan] = []

    def reset(self) -> None:
        """Forget every row's phase: the next batch starts new episodes."""
        self._plans = []

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        """One 7-D action per batch row, float32 in [-1, 1]."""
        if ENV_STATE_KEY not in batch:
            raise KeyError(f"the LIBERO expert needs {ENV_STATE_KEY!r} in the batch; set env.privileged_state=true")
        states = batch["observation.state"].detach().cpu().numpy().astype(np.float64)
        goals = batch[ENV_STATE_KEY].detach().cpu().numpy().astype(np.float64)
        while len(self._plans) < len(states):
            self._plans.append(_Plan())
        actions = np.stack([self._act(plan, state, goal, text)
                            for plan, state, goal, text in zip(self._plans, states, goals, batch["task"])])
        if self.noise_std > 0:
            actions[:, :6] += self._rng.normal(0.0, self.noise_std, size=(len(actions), 6))
        return torch.from_numpy(np.clip(actions, -1.0, 1.0).astype(np.float32))

    @staticmethod
    def _waypoint(plan: _Plan, goal: np.ndarray, text: str, eef: np.ndarray) -> tuple[np.ndarray, float]:
        """The phase's target fingertip position and gripper command."""
        target_pos, box_low, box_high = goal[7:10], goal[14:17], goal[17:20]
        centre = (box_low + box_high) / 2
        if plan.phase <= 1:  # the grasp point follows the object until the fingers close
            plan.grasp = grasp_point(box_low, box_high, bowl="bowl" in text.split(" and ")[0])
            plan.below = plan.grasp[2] - box_low[2]
        # Once held, the object is placed where it sits in the hand now (it may have slid while grasped).
        offset = (eef if plan.phase >= 3 else plan.grasp)[:2] - centre[:2]
        clearance = RELEASE_IN if " in the " in text.split(" and ")[-1] else RELEASE_ON
        place = np.array([target_pos[0] + offset[0], target_pos[1] + offset[1],
                          target_pos[2] + clearance + plan.below])
        carry = max(plan.grasp[2], place[2]) + HOVER
        return {
            0: (plan.grasp + [0, 0, HOVER], -1.0),
            1: (plan.grasp, -1.0),
            2: (plan.grasp, 1.0),
            3: (np.array([plan.grasp[0], plan.grasp[1], carry]), 1.0),
            4: (np.array([place[0], place[1], carry]), 1.0),
            5: (place, 1.0),
            6: (place, -1.0),
            7: (place + [0, 0, HOVER], -1.0),
        }[min(plan.phase, 7)]

    def _act(self, plan: _Plan, state: np.ndarray, goal: np.ndarray, text: str) -> np.ndarray:
        eef, current = state[0:3], Rotation.from_rotvec(state[3:6])
        text = text.lower()
        if plan.orientation is None:  # top-down as the episode starts; turned when the object is wider in y
            size = goal[17:20] - goal[14:17]
            wide_in_y = "bowl" not in text.split(" and ")[0] and size[1] > 0.07 and size[0] < size[1]
            plan.orientation = TURN * current if wide_in_y else current
        target, gripper = self._waypoint(plan, goal, text, eef)
        error = target - eef
        timed = {2: CLOSE_STEPS, 6: OPEN_STEPS}.get(plan.phase)
        reached = plan.steps_in_phase >= timed if timed else np.linalg.norm(error) < TOLERANCE
        if reached or plan.steps_in_phase >= PHASE_LIMIT:
            plan.phase, plan.steps_in_phase = plan.phase + 1, 0
            if plan.phase == 3:  # closed: the fingertips hold the object where they are now
                plan.grasp, plan.below = eef.copy(), eef[2] - goal[16]
            target, gripper = self._waypoint(plan, goal, text, eef)
            error = target - eef
        plan.steps_in_phase += 1
        rotation_error = (plan.orientation * current.inv()).as_rotvec()
        action = np.zeros(7)
        action[0:3] = np.clip(GAIN * error / POS_SCALE, -1.0, 1.0)
        action[3:6] = np.clip(GAIN * rotation_error / ROT_SCALE, -1.0, 1.0)
        action[6] = gripper
        return action
