"""Env observations -> LeRobot policy batches, exactly as `lerobot-eval` builds them.

A batch is what `lerobot-eval`'s `rollout()` hands to the policy's preprocessor:
- `observation.images.<camera>`: float32 [B, 3, H, W] in [0, 1] (channel first);
- `observation.state`: float32 [B, 4] (end-effector xyz, gripper);
- `observation.environment_state`: float32 [B, 39] when the env exposes it (privileged; the expert's input);
- `task`: list[str] of B instructions.
Values are raw (not normalised); normalisation belongs to the policy's own processor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

IMAGE_PREFIX = "observation.images."


def _to_lerobot_raw(obs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    # Rename our keys to the raw gym layout LeRobot's preprocess_observation expects, so the conversion itself
    # is LeRobot's code, not a copy of it.
    raw: dict[str, Any] = {"pixels": {}}
    for key, value in obs.items():
        if key.startswith(IMAGE_PREFIX):
            raw["pixels"][key.removeprefix(IMAGE_PREFIX)] = np.asarray(value)
        elif key == "observation.state":
            raw["agent_pos"] = np.asarray(value)
        elif key == "observation.environment_state":
            raw["environment_state"] = np.asarray(value)
        else:
            raise KeyError(f"observation key {key!r} is not an image, observation.state or "
                           "observation.environment_state key")
    if not raw["pixels"]:
        del raw["pixels"]
    return raw


def observation_to_batch(obs: Mapping[str, np.ndarray], task_texts: Sequence[str] | str) -> dict[str, Any]:
    """Convert a (vector-)env observation and its instructions into a LeRobot policy batch (see module doc)."""
    from lerobot.envs.utils import preprocess_observation

    batch = preprocess_observation(_to_lerobot_raw(obs))
    batch_size = next(iter(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor)))
    texts = [task_texts] * batch_size if isinstance(task_texts, str) else [str(t) for t in task_texts]
    if len(texts) != batch_size:
        raise ValueError(f"{len(texts)} task texts for a batch of {batch_size} observations")
    batch["task"] = texts
    return batch


def actions_to_numpy(actions: Any, batch_size: int, action_dim: int) -> np.ndarray:
    """A policy's `select_action` output -> float32 [B, action_dim] for `vector_env.step`, checked loudly."""
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().to("cpu", torch.float32).numpy()
    actions = np.asarray(actions, dtype=np.float32)
    if actions.shape != (batch_size, action_dim):
        raise ValueError(f"policy.select_action returned shape {tuple(actions.shape)}; the env needs "
                         f"[batch={batch_size}, action_dim={action_dim}] actions in env units")
    if not np.all(np.isfinite(actions)):
        raise ValueError("policy.select_action returned non-finite actions")
    return actions
