"""A scripted pick-and-place expert for LIBERO (libero_spatial, libero_object) from the simulator's poses.

It reads the privileged `observation.environment_state` of `sim.libero_env` (goal object and goal target
poses) and the 8-D `observation.state`, and runs one phase machine per batch row: approach above the grasp
point, descend, close, lift, carry above the target, lower, open, retreat. Actions are LIBERO's 7-D OSC_POSE
deltas (position in units of 5 cm per step, rotation in units of 0.5 rad, gripper -1 open / +1 close), so
the expert runs through exactly the evaluation path of a learned policy (`select_action(batch)`).
Bowls are grasped by the rim (a Panda hand does not span a bowl), everything else at its centre.
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


@dataclass(frozen=True)
class GraspStyle:
    """Where to grasp and release, relative to the object's and the target's body frames (metres)."""

    grasp_offset: tuple[float, float, float]  # from the object body origin to the fingertip centre
    place_height: float  # height of the object's body origin above the target's at release


# A Panda hand (8 cm opening) cannot span a LIBERO bowl (10.5 cm wide, 5.2 cm tall): pinch its wall on the +y
# side, where the fingers (closing along world y in the top-down pose) straddle it.
BOWL = GraspStyle(grasp_offset=(0.0, 0.047, 0.028), place_height=0.035)
CENTRE = GraspStyle(grasp_offset=(0.0, 0.0, 0.02), place_height=0.2)


def style_for(instruction: str) -> GraspStyle:
    """The grasp style of a task's goal object, read from its instruction."""
    return BOWL if "bowl" in instruction.lower().split(" and ")[0] else CENTRE


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
    orientation: Rotation | None = None
    grasp: np.ndarray = field(default_factory=lambda: np.zeros(3))
    hold: np.ndarray | None = None  # fingertip minus object position once grasped (the object may have slid)


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
        actions = np.stack([self._act(plan, state, goal, style_for(text))
                            for plan, state, goal, text in zip(self._plans, states, goals, batch["task"])])
        if self.noise_std > 0:
            actions[:, :6] += self._rng.normal(0.0, self.noise_std, size=(len(actions), 6))
        return torch.from_numpy(np.clip(actions, -1.0, 1.0).astype(np.float32))

    def _waypoint(self, plan: _Plan, goal: np.ndarray, style: GraspStyle) -> tuple[np.ndarray, float]:
        """The phase's target fingertip position and gripper command."""
        obj_pos, target_pos = goal[0:3], goal[7:10]
        if plan.phase <= 1:  # the grasp point follows the object until the fingers close
            plan.grasp = obj_pos + np.asarray(style.grasp_offset)
        hold = np.asarray(style.grasp_offset) if plan.hold is None else plan.hold
        place = target_pos + hold + [0.0, 0.0, style.place_height]
        lift = max(plan.grasp[2], place[2]) + HOVER
        return {
            0: (plan.grasp + [0, 0, HOVER], -1.0),
            1: (plan.grasp, -1.0),
            2: (plan.grasp, 1.0),
            3: (np.array([plan.grasp[0], plan.grasp[1], lift]), 1.0),
            4: (np.array([place[0], place[1], lift]), 1.0),
            5: (place, 1.0),
            6: (place, -1.0),
            7: (place + [0, 0, HOVER], -1.0),
        }[min(plan.phase, 7)]

    def _act(self, plan: _Plan, state: np.ndarray, goal: np.ndarray, style: GraspStyle) -> np.ndarray:
        eef, current = state[0:3], Rotation.from_rotvec(state[3:6])
        if plan.orientation is None:
            plan.orientation = current  # hold the starting (top-down) hand orientation throughout
        target, gripper = self._waypoint(plan, goal, style)
        error = target - eef
        timed = {2: CLOSE_STEPS, 6: OPEN_STEPS}.get(plan.phase)
        reached = plan.steps_in_phase >= timed if timed else np.linalg.norm(error) < TOLERANCE
        if reached or plan.steps_in_phase >= PHASE_LIMIT:
            plan.phase, plan.steps_in_phase = plan.phase + 1, 0
            if plan.phase == 3:  # closed: carry the object as it sits in the hand
                plan.hold = eef - goal[0:3]
            target, gripper = self._waypoint(plan, goal, style)
            error = target - eef
        plan.steps_in_phase += 1
        rotation_error = (plan.orientation * current.inv()).as_rotvec()
        action = np.zeros(7)
        action[0:3] = np.clip(GAIN * error / POS_SCALE, -1.0, 1.0)
        action[3:6] = np.clip(GAIN * rotation_error / ROT_SCALE, -1.0, 1.0)
        action[6] = gripper
        return action
