"""A robot-side smoke client for `vst-vla serve`, built on the real `openpi-client` package.

Run it with the robot's Python, not ours (openpi-client needs numpy < 2; `make robot-venv` builds one):
    .venv-robot/bin/python policies/serving/robot_client.py --port 8000 --steps 3 --out exchange.json
It reads the observation spec from the connect metadata, sends `--steps` random observations of the right
shapes and dtypes, then one malformed request, and writes every observation and reply to `--out` (JSON).
With `--async-steps N` it then runs N control ticks at `--fps` the asynchronous way: one queued action per
tick, the next chunk requested in the background when the queue runs low, the threshold set from the
measured latency (`policies/execution/action_queue.py`, numpy only: copy it next to this file on a robot).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from openpi_client import websocket_client_policy

try:
    from action_queue import AsyncChunkQueue, delay_steps, threshold_for_delay  # copied next to this file
except ImportError:  # running from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from policies.execution.action_queue import AsyncChunkQueue, delay_steps, threshold_for_delay


def random_observation(spec: dict, prompt: str, rng: np.random.Generator) -> dict:
    """One observation matching the server's spec: uint8 images, float32 state, the prompt."""
    obs = {}
    for key, entry in spec["required"].items():
        if entry.get("type") == "str":
            obs[key] = prompt
        elif entry["dtype"] == "uint8":
            obs[key] = rng.integers(0, 256, size=entry["shape"], dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=entry["shape"]).astype(np.float32)
    return obs


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape), "values": value.tolist()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_async(client, metadata: dict, prompt: str, ticks: int, fps: float, rng: np.random.Generator) -> dict:
    """Asynchronous control: execute one queued action per tick; when the queue runs down to the threshold,
    send this tick's observation from a background thread; the threshold keeps `delay + 1` steps of actions
    queued, the delay measured from the latencies seen so far."""
    per_chunk = int(metadata["actions_per_reply"])
    execution = metadata.get("execution", {})
    rtc = execution.get("mode") == "rtc"  # the server guides the next chunk by our queued actions: no blending
    queue = AsyncChunkQueue(per_chunk, chunk_size_threshold=min(1.0, 2 / per_chunk),
                            aggregate="latest_only" if rtc else "weighted_average")
    lock, latencies, delay = threading.Lock(), [], 1

    def request(observation: dict, timestep: int) -> None:
        nonlocal delay
        start = time.perf_counter()
        actions = client.infer(observation)["actions"]
        with lock:
            latencies.append(time.perf_counter() - start)
            queue.receive(actions, timestep)
            delay = min(delay_steps(max(latencies[-5:]), fps) + 1, per_chunk - 1)
            queue.threshold = threshold_for_delay(delay, per_chunk)

    executed = 0
    for _ in range(ticks):
        tick = time.perf_counter()
        with lock:
            if queue.ready_to_request():
                timestep = queue.mark_requested()
                observation = random_observation(metadata["observation"], prompt, rng)
                queued = queue.queued()
                if rtc and queued is not None:
                    observation["action_prefix"] = queued[: int(execution["chunk_size"])].astype(np.float32)
                    observation["inference_delay"] = min(delay, len(observation["action_prefix"]))
                threading.Thread(target=request, args=(observation, timestep), daemon=True).start()
            executed += queue.pop() is not None  # a robot sends this action to its motors here
        time.sleep(max(0.0, 1.0 / fps - (time.perf_counter() - tick)))
    return {"ticks": ticks, "executed": executed, "starved_steps": queue.starved_steps, "requests": len(latencies),
            "latency_ms_max": 1000 * max(latencies, default=0.0), "threshold": queue.threshold}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="pick up the cube")
    parser.add_argument("--async-steps", type=int, default=0, help="control ticks of asynchronous execution")
    parser.add_argument("--fps", type=float, default=10.0, help="control rate of the asynchronous loop")
    parser.add_argument("--out", default=None, help="write the exchange here as JSON (default: stdout)")
    args = parser.parse_args(argv)

    client = websocket_client_policy.WebsocketClientPolicy(host=args.host, port=args.port, api_key=args.api_key)
    metadata = client.get_server_metadata()
    rng = np.random.default_rng(args.seed)
    exchange = {"numpy": np.__version__, "metadata": _jsonable(metadata), "steps": []}
    for _ in range(args.steps):
        obs = random_observation(metadata["observation"], args.prompt, rng)
        reply = client.infer(obs)
        exchange["steps"].append({"observation": _jsonable(obs), "reply": _jsonable(reply)})
    bad = {key: np.zeros(3, np.float32) for key in metadata["observation"]["required"]}
    try:
        client.infer(bad)
        exchange["malformed_reply"] = None
    except RuntimeError as exc:  # openpi-client raises the server's text error frame
        exchange["malformed_reply"] = str(exc)
    exchange["after_error"] = _jsonable(client.infer(random_observation(metadata["observation"], args.prompt, rng)))
    if args.async_steps:
        exchange["async"] = run_async(client, metadata, args.prompt, args.async_steps, args.fps, rng)
    text = json.dumps(exchange)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
