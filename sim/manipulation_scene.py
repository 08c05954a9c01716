"""MetaWorld manipulation states posed for spatial questions: the objects a policy acts on and the gripper.

A state is a MetaWorld task reset from a seed, then driven by the task's scripted expert (with action noise) for a
random number of steps, so the gripper is wherever a policy's gripper would be during the task: far from the
object, approaching it, holding it. The objects of interest are named bodies of the task's model with a short
label a question can use; the gripper point is MetaWorld's own `tcp_center` (the midpoint of the two fingertips).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from sim.metaworld_env import MetaWorldEnv

# Task -> {label: body}: the bodies a question may ask about (visible from `corner2`, the policy's camera).
MANIPULATION_OBJECTS: dict[str, dict[str, str]] = {
    "pick-place-v3": {"puck": "obj"},
    "push-v3": {"puck": "obj"},
    "reach-v3": {"puck": "obj"},
    "pick-place-wall-v3": {"puck": "obj", "wall": "wall"},
    "shelf-place-v3": {"cube": "obj", "shelf": "shelf"},
    "bin-picking-v3": {"cube": "obj", "left bin": "binA", "right bin": "binB"},
    "hammer-v3": {"hammer": "hammer", "nail box": "box"},
    "assembly-v3": {"nut": "RoundNut", "peg": "peg"},
    "basketball-v3": {"ball": "bsktball", "hoop": "basketballhoop"},
    "coffee-push-v3": {"mug": "obj"},
}
CAMERA = "corner2"


@dataclass
class ManipulationState:
    """A posed MetaWorld task: the env (its MuJoCo `model` and `data` hold the state) and the objects asked about."""

    task: str
    env: MetaWorldEnv
    objects: dict[str, str]  # label -> body
    expert_steps: int

    @property
    def model(self):
        return self.env.physics.model

    @property
    def data(self):
        return self.env.physics.data

    def gripper_point(self) -> np.ndarray:
        """World position of the point between the gripper's fingertips (MetaWorld's `tcp_center`)."""
        return np.asarray(self.env.physics.tcp_center, dtype=float).copy()

    def close(self) -> None:
        self.env.close()


# Where a freely placed gripper starts (world metres): over the table's working area and low, so objects are
# beside, in front of or behind it as often as below it (an expert's gripper is mostly above its object).
FREE_HAND_LOW = np.array([-0.25, 0.45, 0.04])
FREE_HAND_HIGH = np.array([0.25, 0.85, 0.15])


def pose_state(task: str, seed: int, rng: np.random.Generator, image_size: int, max_expert_steps: int = 60,
               noise_std: float = 0.3, objects: dict[str, str] | None = None,
               free_hand_fraction: float = 0.5) -> ManipulationState:
    """Reset `task` with `seed`; then, with probability `free_hand_fraction`, leave the gripper where a reset to a
    random start (in `FREE_HAND_LOW`..`FREE_HAND_HIGH`) puts it, else run the task's scripted expert (Gaussian
    action noise `noise_std`) for a random number of steps in [0, `max_expert_steps`]. Nothing is rendered."""
    from metaworld.policies import ENV_POLICY_MAP

    env = MetaWorldEnv(task, cameras=(CAMERA,), image_size=image_size, max_episode_steps=10_000)
    sim = env.physics
    free_hand = bool(rng.random() < free_hand_fraction)
    if free_hand:
        sim.hand_init_pos = rng.uniform(FREE_HAND_LOW, FREE_HAND_HIGH)  # MetaWorld's reset drives the hand there
    sim.seed(int(seed))
    obs, _ = sim.reset()
    expert = ENV_POLICY_MAP[env.task]()
    steps = 0 if free_hand else int(rng.integers(0, max_expert_steps + 1))
    for _ in range(steps):
        with warnings.catch_warnings():  # MetaWorld's experts warn on every clipped action; the clip is intended
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = expert.get_action(obs) + rng.normal(0.0, noise_std, size=4)
        obs, *_ = sim.step(np.clip(action, -1.0, 1.0).astype(np.float32))
    chosen = objects if objects is not None else MANIPULATION_OBJECTS[env.task]
    return ManipulationState(env.task, env, dict(chosen), steps)
