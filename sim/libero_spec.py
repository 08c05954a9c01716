"""What an `env/libero` config produces: its tasks, rate and LeRobot features (LeRobot's LIBERO dataset keys)."""

from __future__ import annotations

from typing import Any

from sim.env_spec import EnvSpec, lerobot_features
from sim.libero_env import (
    ENV_STATE_DIM,
    libero_env_kwargs,
    libero_instruction,
    resolve_libero_tasks,
    split_task,
)
from sim.libero_protocol import (
    ACTION_NAMES,
    CONTROL_FPS,
    STATE_NAMES,
    image_key,
    max_steps,
)


def libero_tasks(env_cfg: Any) -> list[str]:
    """The config's tasks: `suite` (with `task_ids`, default all) when set, else `task` (suites or suite/id)."""
    suite = env_cfg.get("suite")
    return resolve_libero_tasks(suite if suite else env_cfg.get("task", "libero_spatial"), env_cfg.get("task_ids"))


def libero_env_spec(env_cfg: Any, video: bool = False, include_env_state: bool = False) -> EnvSpec:
    """The spec of an `env/libero` config; features match LeRobot's LIBERO datasets (image, image2, 8-D state)."""
    kwargs = libero_env_kwargs(env_cfg)
    features = lerobot_features([image_key(c) for c in kwargs["cameras"]], kwargs["image_size"], video, STATE_NAMES,
                                ENV_STATE_DIM if include_env_state and kwargs["privileged_state"] else None,
                                ACTION_NAMES)
    tasks = tuple(libero_tasks(env_cfg))
    budget = kwargs["max_episode_steps"] or max(max_steps(split_task(t)[0]) for t in tasks)
    return EnvSpec(tasks=tasks, fps=CONTROL_FPS, features=features, max_episode_steps=budget,
                   instructions={t: libero_instruction(t) for t in tasks}, robot_type="panda")
