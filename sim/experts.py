"""Reference policies with LeRobot's policy interface: MetaWorld's scripted experts and a random policy.

Both take the raw LeRobot batch of `sim.policy_io.observation_to_batch` and return env-unit actions
[B, 4], so they run through exactly the evaluation path a learned policy does.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from sim.metaworld_env import ACTION_DIM
from sim.tasks import task_for_instruction

ENV_STATE_KEY = "observation.environment_state"


class ScriptedExpert:
    """MetaWorld's scripted policy for each sub-env's task, found from the batch's instruction text.

    Reads the privileged `observation.environment_state` (MetaWorld's 39-D state); `noise_std` adds Gaussian
    action noise (clipped to [-1, 1]) for more varied demonstrations.
    """

    def __init__(self, noise_std: float = 0.0, seed: int = 0) -> None:
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._row_rngs: list[np.random.Generator] = []
        self._policies: dict[str, Any] = {}

    def reset(self) -> None:
        """Nothing to clear: MetaWorld's scripted policies are memoryless."""

    def seed_episodes(self, seeds: list[int]) -> None:
        """One noise stream per batch row, seeded by (expert seed, episode seed): an episode's noise does not
        depend on the batch it runs in or the episodes before it."""
        self._row_rngs = [np.random.default_rng([self.seed, int(s)]) for s in seeds]

    def _policy(self, text: str):
        task = task_for_instruction().get(text)
        if task is None:
            raise KeyError(f"no MetaWorld task has the instruction {text!r}")
        if task not in self._policies:  # called per sub-env per step: import and build once per task
            from metaworld.policies import ENV_POLICY_MAP

            self._policies[task] = ENV_POLICY_MAP[task]()
        return self._policies[task]

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        """One action per batch row, [B, 4] float32 in [-1, 1]."""
        if ENV_STATE_KEY not in batch:
            raise KeyError(f"the scripted expert needs {ENV_STATE_KEY!r} in the batch; set "
                           "env.privileged_state=true")
        states = batch[ENV_STATE_KEY].detach().cpu().numpy().astype(np.float64)
        with warnings.catch_warnings():  # MetaWorld's experts warn on every clipped action; the clip is intended
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            actions = np.stack([self._policy(text).get_action(state)
                                for text, state in zip(batch["task"], states)])
        if self.noise_std > 0:
            rngs = self._row_rngs if len(self._row_rngs) == len(actions) else [self._rng] * len(actions)
            actions = actions + np.stack([rng.normal(0.0, self.noise_std, size=actions.shape[1:]) for rng in rngs])
        return torch.from_numpy(np.clip(actions, -1.0, 1.0).astype(np.float32))


class RandomPolicy:
    """Uniform random actions in [-1, 1]: the chance-level baseline."""

    def __init__(self, action_dim: int | None = ACTION_DIM, seed: int = 0) -> None:
        # None: set by `sim.rollout.evaluate` from the env's action feature before the first step
        self.action_dim = None if action_dim is None else int(action_dim)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._row_rngs: list[np.random.Generator] = []

    def reset(self) -> None:
        """Nothing to clear."""

    def seed_episodes(self, seeds: list[int]) -> None:
        """One stream per batch row, seeded by (policy seed, episode seed), as `ScriptedExpert` does."""
        self._row_rngs = [np.random.default_rng([self.seed, int(s)]) for s in seeds]

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, action_dim] uniform samples; B is the length of the batch's task list."""
        n = len(batch["task"])
        rngs = self._row_rngs if len(self._row_rngs) == n else [self._rng] * n
        actions = np.stack([rng.uniform(-1.0, 1.0, size=self.action_dim) for rng in rngs])
        return torch.from_numpy(actions.astype(np.float32))
