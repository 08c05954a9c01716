"""What an env config produces: its tasks, rate and LeRobot features, and the vector envs that run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from sim.metaworld_env import (
    ACTION_NAMES,
    CONTROL_FPS,
    ENV_STATE_DIM,
    STATE_NAMES,
    env_factory,
    env_kwargs,
    image_key,
)
from sim.tasks import instruction, resolve_tasks

VECTOR_MODES = ("sync", "async")


@dataclass(frozen=True)
class EnvSpec:
    """The tasks, control rate and LeRobot features (`{key: {dtype, shape, names}}`) of an env config."""

    tasks: tuple[str, ...]
    fps: int
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_episode_steps: int = 150
    instructions: dict[str, str] = field(default_factory=dict)  # task -> the `task` text of its frames
    robot_type: str = "sawyer"

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in ("image", "video")]


def lerobot_features(image_keys: list[str], image_size: int, video: bool, state_names: list[str],
                     env_state_dim: int | None, action_names: list[str]) -> dict[str, dict[str, Any]]:
    """LeRobot features `{key: {dtype, shape, names}}`: cameras (stored as `video` or `image`), the state, the
    privileged environment state when `env_state_dim` is given, and the action."""
    features: dict[str, dict[str, Any]] = {
        key: {"dtype": "video" if video else "image", "shape": (image_size, image_size, 3),
              "names": ["height", "width", "channels"]} for key in image_keys}
    features["observation.state"] = {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)}
    if env_state_dim is not None:
        features["observation.environment_state"] = {"dtype": "float32", "shape": (env_state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (len(action_names),), "names": list(action_names)}
    return features


def env_spec(env_cfg: Any, video: bool = False, include_env_state: bool = False) -> EnvSpec:
    """The spec of an `env/metaworld` or `env/libero` config; `video` picks the dataset storage of the cameras."""
    if env_cfg.get("name") == "libero":
        from sim.libero_spec import libero_env_spec

        return libero_env_spec(env_cfg, video=video, include_env_state=include_env_state)
    if env_cfg.get("name", "metaworld") != "metaworld":
        raise ValueError(f"env={env_cfg.get('name')!r} runs through LeRobot's env configs (lerobot-eval), not "
                         f"through vst-vla collect/eval-sim; see configs/env/{env_cfg.get('name')}.yaml")
    kwargs = env_kwargs(env_cfg)
    features = lerobot_features([image_key(c) for c in kwargs["cameras"]], kwargs["image_size"], video, STATE_NAMES,
                                ENV_STATE_DIM if include_env_state and kwargs["privileged_state"] else None,
                                ACTION_NAMES)
    tasks = tuple(resolve_tasks(env_cfg.get("task", "pick-place")))
    return EnvSpec(tasks=tasks, fps=CONTROL_FPS, features=features, max_episode_steps=kwargs["max_episode_steps"],
                   instructions={t: instruction(t) for t in tasks})


def make_vector_env(env_cfg: Any, task: str, n_envs: int, vector_mode: str = "sync") -> gym.vector.VectorEnv:
    """`n_envs` copies of one task as a gymnasium vector env; sub-envs freeze once their episode ends.

    The freeze (LeRobot's `FreezeAfterEpisodeEnd`) replays a finished sub-env's terminal step instead of
    simulating and rendering it until the slowest sub-env of the batch is done.
    """
    from lerobot.envs.utils import freeze_after_episode_end

    if vector_mode not in VECTOR_MODES:
        raise ValueError(f"vector={vector_mode!r} is not one of {', '.join(VECTOR_MODES)}")
    if n_envs < 1:
        raise ValueError(f"n_envs={n_envs} must be >= 1")
    if env_cfg.get("name") == "libero":
        from sim.libero_env import libero_env_factory, libero_env_kwargs

        factory = libero_env_factory(task, **libero_env_kwargs(env_cfg))
    else:
        factory = env_factory(task, **env_kwargs(env_cfg))
    fns = [freeze_after_episode_end(factory)] * n_envs  # one factory, n envs
    if vector_mode == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    # forkserver: workers start clean, so each creates its own GL context (a forked one crashes).
    return gym.vector.AsyncVectorEnv(fns, context="forkserver", shared_memory=True,
                                     autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


_EXPERTS = {"metaworld": "sim.experts.ScriptedExpert", "libero": "sim.libero_experts.LiberoPickPlaceExpert"}


def scripted_expert(env_name: str = "metaworld", noise_std: float = 0.0, seed: int = 0) -> Any:
    """The scripted expert of an env (`policy=expert` in eval-sim): MetaWorld's policies or LIBERO's pick-place."""
    from hydra.utils import get_class

    if env_name not in _EXPERTS:
        raise ValueError(f"no scripted expert for env={env_name!r}; experts exist for {', '.join(_EXPERTS)}")
    return get_class(_EXPERTS[env_name])(noise_std=noise_std, seed=seed)
