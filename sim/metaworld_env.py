"""MetaWorld v3 tasks as gymnasium envs with LeRobot-style observations.

Observation (a `gymnasium.spaces.Dict`):
- `observation.images.<camera>`: uint8 HxWx3 per camera, rendered offscreen without shadows, reflections,
  multisampling or skybox by default (on a CPU rasteriser shadows cost ~10x, 4x MSAA ~5x, the skybox ~1.7x);
- `observation.state`: float32 [4], end-effector xyz and gripper opening (MetaWorld's observation[:4]);
- `observation.environment_state` (when `privileged_state`): float32 [39], MetaWorld's full state vector
  (object and goal poses). Only the scripted expert reads it; learned policies use images and state.
The instruction text is the env's `task_description` attribute (LeRobot's convention, read through
`vector_env.call("task_description")`). Actions are MetaWorld's 4-D float32 in [-1, 1]. The episode
terminates on `info["success"]` and is truncated after `max_episode_steps`. `reset(seed=s)` gives the same
object and goal placement for the same `s`.

The MuJoCo model and the GL context are built on first use, so a factory can be sent to an
`AsyncVectorEnv` worker and the renderer is created inside the process that renders.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.tasks import canonical_task, instruction

STATE_DIM = 4
ENV_STATE_DIM = 39
ACTION_DIM = 4
CONTROL_FPS = 80  # MetaWorld's control rate: MuJoCo timestep 2.5 ms x frame_skip 5
STATE_NAMES = ["x", "y", "z", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
# LeRobot's MetaWorld env moves the corner2 camera closer and flips its image; we do the same so frames match.
_CAMERA_POSE_OVERRIDES = {"corner2": (0.75, 0.075, 0.7)}
_FLIPPED_CAMERAS = {"corner2"}


def is_flipped(camera: str) -> bool:
    """Whether the env rotates `camera`'s image by 180 degrees (as LeRobot's MetaWorld env does for corner2)."""
    return camera in _FLIPPED_CAMERAS


def image_key(camera: str) -> str:
    """The observation key of a camera's images (LeRobot convention)."""
    return f"observation.images.{camera}"


class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task with camera images, proprioceptive state and an instruction."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FPS}

    def __init__(self, task: str, cameras: Sequence[str] = ("corner2",), image_size: int = 64,
                 max_episode_steps: int = 150, shadows: bool = False, reflections: bool = False,
                 antialias: bool = False, skybox: bool = False, privileged_state: bool = True,
                 terminate_on_success: bool = True, render_threads: int | None = None,
                 render_mode: str = "rgb_array") -> None:
        super().__init__()
        self.task = canonical_task(task)
        self.task_description = instruction(self.task)
        self.cameras = [cameras] if isinstance(cameras, str) else list(cameras)
        if not self.cameras:
            raise ValueError("env.cameras is empty; name at least one MetaWorld camera (e.g. corner2)")
        self.image_size = int(image_size)
        self._max_episode_steps = int(max_episode_steps)
        self._render_flags = {"shadows": shadows, "reflections": reflections, "antialias": antialias,
                              "skybox": skybox}
        self.privileged_state = privileged_state
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.render_threads = render_threads
        self.observation_space = spaces.Dict(self._observation_spaces())
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._sim = None
        self._renderer = None
        self._camera_ids: dict[str, int] = {}
        self._raw_obs: np.ndarray | None = None

    def _observation_spaces(self) -> dict[str, spaces.Space]:
        size = (self.image_size, self.image_size, 3)
        obs = {image_key(c): spaces.Box(0, 255, shape=size, dtype=np.uint8) for c in self.cameras}
        obs["observation.state"] = spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)
        if self.privileged_state:
            obs["observation.environment_state"] = spaces.Box(-np.inf, np.inf, shape=(ENV_STATE_DIM,),
                                                              dtype=np.float32)
        return obs

    def _ensure_sim(self) -> None:
        if self._sim is not None:
            return
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        sim = ALL_V3_ENVIRONMENTS[self.task]()
        # Goal-observable, freshly sampled placements drawn from the env's own seeded RNG: what MetaWorld's
        # goal-observable classes do, minus their unseeded reset in the constructor.
        sim._partially_observable = False
        del sim.sawyer_observation_space
        sim._set_task_called = True
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim.max_path_length = self._max_episode_steps
        model = sim.model
        for camera in self.cameras:
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"MetaWorld has no camera {camera!r}; cameras: {', '.join(names)}")
            self._camera_ids[camera] = cam_id
            if camera in _CAMERA_POSE_OVERRIDES:
                model.cam_pos[cam_id] = _CAMERA_POSE_OVERRIDES[camera]
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.image_size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.image_size)
        if not self._render_flags["antialias"]:
            model.vis.quality.offsamples = 0  # 4x MSAA costs ~5x per frame on llvmpipe
        self._sim = sim

    def _ensure_renderer(self):
        if self._renderer is None:
            import mujoco

            if self.render_threads is not None:
                # Mesa's llvmpipe reads this when the GL context is made. Its default (one raster thread per core)
                # measured fastest here, for single envs and async workers alike.
                os.environ["LP_NUM_THREADS"] = str(self.render_threads)
            self._ensure_sim()
            renderer = mujoco.Renderer(self._sim.model, self.image_size, self.image_size)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self._render_flags["shadows"]
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = self._render_flags["reflections"]
            # The skybox is hidden behind the table from MetaWorld's cameras yet costs ~40 % of a frame.
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = self._render_flags["skybox"]
            self._renderer = renderer
        return self._renderer

    def _render_camera(self, camera: str) -> np.ndarray:
        renderer = self._ensure_renderer()
        renderer.update_scene(self._sim.data, camera=self._camera_ids[camera])
        image = renderer.render()
        if camera in _FLIPPED_CAMERAS:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {image_key(c): self._render_camera(c) for c in self.cameras}
        obs["observation.state"] = self._raw_obs[:STATE_DIM].astype(np.float32)
        if self.privileged_state:
            obs["observation.environment_state"] = self._raw_obs.astype(np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; the same `seed` gives the same object and goal placement."""
        super().reset(seed=seed)
        self._ensure_sim()
        if seed is not None:
            self._sim.seed(int(seed))
        self._raw_obs, _ = self._sim.reset()
        return self._observation(), {"is_success": False, "task": self.task}

    def step(self, action: np.ndarray):
        """Apply a 4-D action in [-1, 1]; terminated on success, truncated at `max_episode_steps`."""
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(ACTION_DIM), -1.0, 1.0)
        self._raw_obs, reward, _, truncated, info = self._sim.step(action)
        success = bool(info.get("success", 0.0))
        terminated = success and self.terminate_on_success
        out_info = {"is_success": success, "task": self.task}
        return self._observation(), float(reward), terminated, bool(truncated), out_info

    def render(self) -> np.ndarray:
        """The first camera's current frame."""
        return self._render_camera(self.cameras[0])

    @property
    def physics(self):
        """The underlying MetaWorld env (its `model`, `data`, `tcp_center`, raw `step`), built on first use; for
        code that poses the scene directly, such as the spatial-data generator."""
        self._ensure_sim()
        return self._sim

    def raw_observation(self) -> np.ndarray:
        """MetaWorld's 39-D observation of the current step (float64)."""
        return self._raw_obs

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._sim is not None:
            self._sim.close()
            self._sim = None


def env_kwargs(env_cfg: Any) -> dict[str, Any]:
    """The `MetaWorldEnv` keyword arguments (all but the task) of an `env/metaworld` config node."""
    cameras = env_cfg.get("cameras") or ["corner2"]
    return {"cameras": [str(c) for c in cameras], "image_size": int(env_cfg.get("image_size", 64)),
            "max_episode_steps": int(env_cfg.get("max_episode_steps", 150)),
            "shadows": bool(env_cfg.get("shadows", False)), "reflections": bool(env_cfg.get("reflections", False)),
            "antialias": bool(env_cfg.get("antialias", False)), "skybox": bool(env_cfg.get("skybox", False)),
            "privileged_state": bool(env_cfg.get("privileged_state", True)),
            "terminate_on_success": bool(env_cfg.get("terminate_on_success", True)),
            "render_threads": None if env_cfg.get("render_threads") is None else int(env_cfg.get("render_threads"))}


def env_factory(task: str, **kwargs: Any) -> Callable[[], MetaWorldEnv]:
    """A picklable factory (for `AsyncVectorEnv` workers) building one `MetaWorldEnv`."""
    return functools.partial(MetaWorldEnv, task, **kwargs)
