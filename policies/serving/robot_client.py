"""A robot-side smoke client for `vst-vla serve`, built on the real `openpi-client` package.

Run it with the robot's Python, not ours (openpi-client needs numpy < 2; `make robot-venv` builds one):
    .venv-robot/bin/python policies/serving/robot_client.py --port 8000 --steps 3 --out exchange.json
It reads the observation spec from the connect metadata, sends `--steps` random observations of the right
shapes and dtypes, then one malformed request, and writes every observation and reply to `--out` (JSON).
It imports only openpi_client and numpy, so it runs anywhere openpi-client is installed.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from openpi_client import websocket_client_policy


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="pick up the cube")
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
    text = json.dumps(exchange)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
