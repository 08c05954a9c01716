"""The robot side of a LIBERO evaluation over openpi's policy protocol (websocket + msgpack-numpy).

It runs the simulator (`sim.libero_env`, the anchors' protocol) and asks a policy server for actions, the way
openpi's `examples/libero/main.py` scores a served policy: one connection, the server's metadata first, one
observation per request, `replan_steps` actions of each reply executed before the next request, success from
the env. Two request layouts:
- `lerobot` (a `vst-vla serve` bundle): the keys, image sizes and state dimension come from the server's
  connect metadata (`observation.images.image`, `observation.images.image2`, `observation.state`, `prompt`),
  and `reset: true` opens each episode so the server drops the previous episode's queued actions;
- `openpi` (an openpi server, whose metadata has no observation spec): openpi's LIBERO keys
  `observation/image`, `observation/wrist_image` (224 px), `observation/state`, `prompt`.
`auto` picks `lerobot` when the metadata carries a spec. The client speaks the wire format with
`policies.msgpack_numpy` (openpi-client itself needs numpy < 2, which the simulator's stack does not allow).

    python -m policies.serving.libero_client --port 8000 --suite libero_spatial --task-ids 0 --episodes 2
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from policies import msgpack_numpy
from sim.eval_report import Episode, EvalResult
from sim.libero_env import LiberoEnv, resolve_libero_tasks
from sim.libero_protocol import CAMERA_KEYS, image_key

log = logging.getLogger(__name__)

OPENPI_KEYS = {"agentview": "observation/image", "robot0_eye_in_hand": "observation/wrist_image"}
OPENPI_STATE_KEY, OPENPI_IMAGE_SIZE, RENDER_SIZE = "observation/state", 224, 256
LEROBOT_KEYS = {image_key(c): c for c in CAMERA_KEYS}


class PolicyConnection:
    """One websocket connection to an openpi-protocol policy server: metadata on connect, then infer()."""

    def __init__(self, host: str, port: int, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._ws: ClientConnection = connect(f"ws://{host}:{port}", additional_headers=headers,
                                             max_size=None, compression=None, open_timeout=timeout_s)
        self.metadata = msgpack_numpy.unpackb(self._ws.recv(timeout=timeout_s))
        self.timeout_s = timeout_s

    def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        """Send one observation, return the decoded reply; a text frame is the server's error message."""
        self._ws.send(msgpack_numpy.packb(observation))
        reply = self._ws.recv(timeout=self.timeout_s)
        if isinstance(reply, bytes):
            return msgpack_numpy.unpackb(reply)
        raise RuntimeError(f"the policy server refused the request: {reply}")  # a text frame: its error

    def close(self) -> None:
        self._ws.close()


class RequestLayout:
    """How env observations become requests: keys per camera, image size, state key, reset flag."""

    def __init__(self, metadata: dict[str, Any], mode: str = "auto") -> None:
        spec = metadata.get("observation") if isinstance(metadata, dict) else None
        mode = ("lerobot" if spec else "openpi") if mode == "auto" else mode
        if mode == "lerobot":
            if not spec:
                raise ValueError("layout=lerobot needs the server's observation spec in its connect metadata")
            self._from_spec(spec)
        elif mode == "openpi":
            self.cameras = dict(OPENPI_KEYS)
            self.image_size, self.render_size = OPENPI_IMAGE_SIZE, RENDER_SIZE
            self.state_key, self.prompt_key, self.send_reset = OPENPI_STATE_KEY, "prompt", False
        else:
            raise ValueError(f"layout={mode!r} is not one of auto, lerobot, openpi")
        self.mode = mode

    def _from_spec(self, spec: dict[str, Any]) -> None:
        required = spec["required"]
        self.cameras, sizes, self.state_key, self.prompt_key = {}, set(), None, "prompt"
        for key, entry in required.items():
            if entry.get("type") == "str":
                self.prompt_key = key
            elif entry.get("dtype") == "uint8":
                if key not in LEROBOT_KEYS:
                    raise ValueError(f"the server wants image {key!r}; LIBERO provides {sorted(LEROBOT_KEYS)}")
                self.cameras[LEROBOT_KEYS[key]] = key
                sizes.add(tuple(entry["shape"][:2]))
            else:
                if key != "observation.state" or list(entry["shape"]) != [8]:
                    raise ValueError(f"the server wants {key!r} of shape {entry['shape']}; LIBERO provides "
                                     "observation.state of shape [8]")
                self.state_key = key
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise ValueError(f"the server's cameras must share one square size, got {sorted(sizes)}")
        self.image_size = self.render_size = next(iter(sizes))[0]
        self.send_reset = "reset" in spec.get("optional", {})

    def request(self, obs: dict[str, np.ndarray], prompt: str, first: bool) -> dict[str, Any]:
        """The request for one env observation (images already rotated by the env)."""
        out: dict[str, Any] = {}
        for camera, key in self.cameras.items():
            image = obs[image_key(camera)]
            if image.shape[0] != self.image_size:
                image = np.asarray(Image.fromarray(image).resize((self.image_size,) * 2, Image.BILINEAR))
            out[key] = image
        if self.state_key:
            out[self.state_key] = obs["observation.state"].astype(np.float32)
        out[self.prompt_key] = prompt
        if self.send_reset and first:
            out["reset"] = True
        return out


def run_episode(conn: PolicyConnection, layout: RequestLayout, env: LiberoEnv, seed: int,
                replan_steps: int | None) -> Episode:
    """One episode of `env` from init state `seed`, driven by the server; success as the env reports it."""
    obs, _ = env.reset(seed=seed)
    plan: deque[np.ndarray] = deque()
    success, steps, first = False, 0, True
    while True:
        if not plan:
            actions = np.asarray(conn.infer(layout.request(obs, env.task_description, first))["actions"])
            first = False
            plan.extend(actions[: replan_steps or len(actions)])
        obs, _, terminated, truncated, info = env.step(plan.popleft())
        steps += 1
        success = success or bool(info["is_success"])
        if terminated or truncated:
            break
    return Episode(task=env.task, seed=seed, success=success, length=steps, sum_reward=float(success))


def evaluate_served(host: str, port: int, tasks: Sequence[str], episodes: int, seed: int = 1000,
                    layout: str = "auto", replan_steps: int | None = None, api_key: str | None = None,
                    max_episode_steps: int | None = None, hard_reset: bool = True) -> EvalResult:
    """Score the policy served at host:port on LIBERO `tasks`, `episodes` each (episode i: init state seed+i).

    `max_episode_steps` None keeps each suite's budget (the protocol); a number shortens episodes (tests).
    `hard_reset=False` builds each task's model once instead of per episode (see `sim.libero_env`).
    """
    conn = PolicyConnection(host, port, api_key)
    started, results = time.perf_counter(), []
    try:
        request_layout = RequestLayout(conn.metadata, layout)
        for task in tasks:
            env = LiberoEnv(task, cameras=list(request_layout.cameras), image_size=request_layout.render_size,
                            max_episode_steps=max_episode_steps, privileged_state=False, hard_reset=hard_reset)
            try:
                for i in range(episodes):
                    results.append(run_episode(conn, request_layout, env, seed + i, replan_steps))
                    log.info("%s episode %d: %s", task, i, "success" if results[-1].success else "failure")
            finally:
                env.close()
    finally:
        conn.close()
    return EvalResult(policy=f"served@{host}:{port}", episodes=results, n_envs=1, vector_mode="sync",
                      wall_s=time.perf_counter() - started, env_steps=sum(e.length for e in results),
                      meta={"tasks": list(tasks), "seed": seed, "layout": request_layout.mode,
                            "protocol": "openpi-websocket-msgpack-numpy"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--suite", default="libero_spatial", help="a suite, <suite>/<id>, or a comma list")
    parser.add_argument("--task-ids", type=int, nargs="*", default=None, help="default: every task of the suite")
    parser.add_argument("--episodes", type=int, default=50, help="per task (openpi: 50)")
    parser.add_argument("--seed", type=int, default=1000, help="episode i uses init state (seed + i) mod 50")
    parser.add_argument("--layout", default="auto", choices=["auto", "lerobot", "openpi"])
    parser.add_argument("--replan-steps", type=int, default=None, help="actions executed per reply (openpi: 5)")
    parser.add_argument("--soft-reset", action="store_true", help="build each task's model once (faster)")
    parser.add_argument("--out", default=None, help="folder for eval.json and eval.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    tasks = resolve_libero_tasks(args.suite, args.task_ids)
    result = evaluate_served(args.host, args.port, tasks, args.episodes, args.seed, args.layout,
                             args.replan_steps, args.api_key, hard_reset=not args.soft_reset)
    if args.out:
        result.write(Path(args.out))
    print(result.summary_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
