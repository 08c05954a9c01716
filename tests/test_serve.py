"""The websocket policy server: openpi protocol, malformed requests, disconnects, auth, limits, per-client queues.

The policy here is a small real torch module with the VLA policy's serving interface (`predict_action_chunk`
on a raw LeRobot batch); the bundle tests (test_export.py) serve the real VST-VLA policy.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import websockets.exceptions
from websockets.sync.client import connect

from policies import msgpack_numpy
from policies.safety import ActionLimits
from policies.serving import ObservationSpec, PolicyServer, ServerConfig, ServerThread
from policies.serving.protocol import to_batch, validate_observation

ROBOT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-robot" / "bin" / "python"
CAM, STATE = "observation.images.front", "observation.state"
H = W = 16
STATE_DIM, ACTION_DIM, CHUNK = 3, 4, 4


class TinyChunkPolicy(torch.nn.Module):
    """A real (small) torch policy: pooled pixels + state + prompt length -> an `[B, CHUNK, ACTION_DIM]` chunk."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 + STATE_DIM + 1, CHUNK * ACTION_DIM)
        self.delay_s = delay_s
        self.config = SimpleNamespace(n_action_steps=CHUNK, chunk_size=CHUNK, input_features={
            CAM: {"type": "VISUAL", "shape": [3, H, W]}, STATE: {"type": "STATE", "shape": [STATE_DIM]}})

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        time.sleep(self.delay_s)  # stands for a slow model, to hold a request in flight
        prompt = torch.tensor([[len(t) / 10.0] for t in batch["task"]])
        features = torch.cat([batch[CAM].mean(dim=(2, 3)), batch[STATE], prompt], dim=1)
        return self.proj(features).view(-1, CHUNK, ACTION_DIM)


SPEC = ObservationSpec.from_features(TinyChunkPolicy().config.input_features)
WIDE = ActionLimits(action_dim=ACTION_DIM, low=[-100.0] * ACTION_DIM, high=[100.0] * ACTION_DIM)


def _obs(seed: int = 0, prompt: str = "pick up the cube", **extra) -> dict:
    rng = np.random.default_rng(seed)
    return {CAM: rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8),
            STATE: rng.normal(size=STATE_DIM).astype(np.float32), "prompt": prompt, **extra}


def _expected_chunk(policy: TinyChunkPolicy, obs: dict) -> np.ndarray:
    with torch.inference_mode():
        return policy.predict_action_chunk(to_batch([validate_observation(obs, SPEC)], SPEC))[0].numpy()


def _server(policy=None, limits=WIDE, **config) -> PolicyServer:
    return PolicyServer(policy or TinyChunkPolicy(), SPEC, limits, CHUNK, ServerConfig(port=0, **config),
                        metadata={"policy": "tiny-test"})


def _infer(ws, obs) -> dict | str:
    ws.send(msgpack_numpy.packb(obs))
    reply = ws.recv(timeout=30)
    return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)


def test_round_trip_metadata_actions_and_timing():
    policy = TinyChunkPolicy()
    server = _server(policy)
    with ServerThread(server) as port, connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        metadata = msgpack_numpy.unpackb(ws.recv(timeout=30))
        assert metadata["policy"] == "tiny-test" and metadata["action_dim"] == ACTION_DIM
        assert metadata["observation"]["required"][CAM] == {"shape": [H, W, 3], "dtype": "uint8"}
        first, second = _infer(ws, _obs(1)), _infer(ws, _obs(2))
    assert first["actions"].dtype == np.float32 and first["actions"].shape == (CHUNK, ACTION_DIM)
    np.testing.assert_allclose(first["actions"], _expected_chunk(policy, _obs(1)), atol=1e-6)
    np.testing.assert_allclose(second["actions"], _expected_chunk(policy, _obs(2)), atol=1e-6)
    assert first["server_timing"]["infer_ms"] > 0 and "prev_total_ms" in second["server_timing"]
    assert first["safety"]["clipped"] == 0


def _frame_with_bad_array(override: dict) -> bytes:
    obs = _obs()
    encoded = {k: v for k, v in obs.items() if k != CAM}
    image = obs[CAM]
    encoded[CAM] = {b"__ndarray__": True, b"data": image.tobytes(), b"dtype": image.dtype.str,
                    b"shape": list(image.shape), **override}
    return msgpack_numpy.packb(encoded)


MALFORMED = {
    "not msgpack": (b"\xc1\x00garbage", "not valid msgpack"),
    "truncated msgpack": (msgpack_numpy.packb(_obs())[:-7], "not valid msgpack"),
    "text frame": ("hello", "expected a binary msgpack frame"),
    "not a map": (msgpack_numpy.packb([1, 2, 3]), "must be a map"),
    "unknown key": (msgpack_numpy.packb(_obs(extra_cam=np.zeros(3))), "unknown key(s) ['extra_cam']"),
    "missing key": (msgpack_numpy.packb({k: v for k, v in _obs().items() if k != STATE}),
                    "missing key(s) ['observation.state']"),
    "image wrong shape": (msgpack_numpy.packb({**_obs(), CAM: np.zeros((H, W + 1, 3), np.uint8)}),
                          f"key '{CAM}': wrong shape [16, 17, 3], expected [16, 16, 3]"),
    "image wrong dtype": (msgpack_numpy.packb({**_obs(), CAM: np.zeros((H, W, 3), np.float32)}),
                          f"key '{CAM}': wrong dtype float32, expected uint8"),
    "state wrong dtype": (msgpack_numpy.packb({**_obs(), STATE: np.zeros(STATE_DIM, np.int64)}),
                          "key 'observation.state': wrong dtype int64"),
    "state wrong shape": (msgpack_numpy.packb({**_obs(), STATE: np.zeros((1, STATE_DIM), np.float32)}),
                          "key 'observation.state': wrong shape [1, 3], expected [3]"),
    "state not an array": (msgpack_numpy.packb({**_obs(), STATE: [0.0, 0.0, 0.0]}),
                           "key 'observation.state': expected a float array"),
    "state NaN": (msgpack_numpy.packb({**_obs(), STATE: np.full(STATE_DIM, np.nan, np.float32)}), "NaN"),
    "prompt not a string": (msgpack_numpy.packb({**_obs(), "prompt": 7}), "key 'prompt': expected a non-empty"),
    "array size mismatch": (_frame_with_bad_array({b"shape": [H, W, 4]}), "needs 1024 bytes, got 768"),
    "object dtype": (_frame_with_bad_array({b"dtype": "|O"}), "dtype object is refused"),
    "oversize": (msgpack_numpy.packb({**_obs(), "pad": b"x" * 4096}), "over the limit of 4000 bytes"),
}


def test_every_malformed_request_gets_an_error_naming_it_and_the_connection_keeps_serving():
    policy = TinyChunkPolicy()
    server = _server(policy, max_message_bytes=4000)
    with ServerThread(server) as port, connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        ws.recv(timeout=30)
        for name, (frame, expected) in MALFORMED.items():
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and reply.startswith("error: "), f"{name}: got {reply!r:.80}"
            assert expected in reply, f"{name}: {reply!r}"
            # The same connection still answers a valid request with the right actions.
            ok = _infer(ws, _obs(3))
            np.testing.assert_allclose(ok["actions"], _expected_chunk(policy, _obs(3)), atol=1e-6, err_msg=name)
    assert server.stats.errors == len(MALFORMED)


class FailingPolicy(TinyChunkPolicy):
    """Raises for one prompt, as a model bug or an out-of-memory would."""

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        if "explode" in batch["task"]:
            raise RuntimeError("simulated model failure")
        return super().predict_action_chunk(batch)


def test_policy_failure_gets_an_error_reply_and_the_server_keeps_serving():
    policy = FailingPolicy()
    with ServerThread(_server(policy)) as port, connect(f"ws://127.0.0.1:{port}") as ws:
        ws.recv(timeout=30)
        reply = _infer(ws, _obs(prompt="explode"))
        assert reply == "error: policy failed: RuntimeError: simulated model failure"
        np.testing.assert_allclose(_infer(ws, _obs(6))["actions"], _expected_chunk(policy, _obs(6)), atol=1e-6)


def test_a_failing_request_does_not_fail_the_requests_batched_with_it():
    policy = FailingPolicy(delay_s=0.05)
    server = _server(policy)
    replies: dict[str, object] = {}

    def client(prompt: str, port: int) -> None:
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.recv(timeout=30)
            replies[prompt] = [_infer(ws, _obs(1, prompt=prompt)) for _ in range(3)]

    with ServerThread(server) as port:
        threads = [threading.Thread(target=client, args=(p, port)) for p in ("explode", "a", "bb", "ccc")]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
    assert all(r == "error: policy failed: RuntimeError: simulated model failure" for r in replies["explode"])
    for prompt in ("a", "bb", "ccc"):
        for reply in replies[prompt]:
            np.testing.assert_allclose(reply["actions"], _expected_chunk(policy, _obs(1, prompt=prompt)), atol=1e-5)


def test_frames_over_the_hard_limit_close_only_that_connection():
    server = _server(max_message_bytes=4000, hard_max_message_bytes=20000)
    with ServerThread(server) as port:
        with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
            ws.recv(timeout=30)
            ws.send(msgpack_numpy.packb({**_obs(), "pad": b"x" * 50000}))
            with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1009  # "message too big", before the frame was buffered
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.recv(timeout=30)
            assert _infer(ws, _obs())["actions"].shape == (CHUNK, ACTION_DIM)


def test_client_disconnecting_mid_request_leaves_the_server_serving():
    policy = TinyChunkPolicy(delay_s=0.3)
    server = _server(policy)
    with ServerThread(server) as port:
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.recv(timeout=30)
            ws.send(msgpack_numpy.packb(_obs(4)))  # closed while the policy is still computing its chunk
        time.sleep(0.5)
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.recv(timeout=30)
            reply = _infer(ws, _obs(5))
    np.testing.assert_allclose(reply["actions"], _expected_chunk(policy, _obs(5)), atol=1e-6)
    assert server.stats.connections == 2 and server._batcher.batched_requests == 2


def test_concurrent_clients_keep_separate_action_queues():
    policy = TinyChunkPolicy()
    server = _server(policy, actions_per_reply=1)
    with ServerThread(server) as port, connect(f"ws://127.0.0.1:{port}") as a, connect(f"ws://127.0.0.1:{port}") as b:
        a.recv(timeout=30), b.recv(timeout=30)
        chunk_a, chunk_b = _expected_chunk(policy, _obs(10)), _expected_chunk(policy, _obs(20))
        steps_a, steps_b = [], []
        for step in range(CHUNK):  # interleaved: each robot steps through its own chunk
            steps_a.append(_infer(a, _obs(10 if step == 0 else 99)))
            steps_b.append(_infer(b, _obs(20 if step == 0 else 98)))
        np.testing.assert_allclose(np.concatenate([r["actions"] for r in steps_a]), chunk_a, atol=1e-6)
        np.testing.assert_allclose(np.concatenate([r["actions"] for r in steps_b]), chunk_b, atol=1e-6)
        assert [r["predicted"] for r in steps_a] == [True] + [False] * (CHUNK - 1)
        again = _infer(a, _obs(11))  # the queue ran out: a new chunk from this observation
        reset = _infer(b, _obs(21, reset=True))  # `reset` drops b's queue (a new episode)
    assert again["predicted"] and reset["predicted"]
    np.testing.assert_allclose(again["actions"][0], _expected_chunk(policy, _obs(11))[0], atol=1e-6)
    np.testing.assert_allclose(reset["actions"][0], _expected_chunk(policy, _obs(21))[0], atol=1e-6)


def test_concurrent_requests_are_batched_and_answered_correctly():
    policy = TinyChunkPolicy(delay_s=0.05)
    server = _server(policy)
    results: dict[int, np.ndarray] = {}

    def client(seed: int, port: int) -> None:
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.recv(timeout=30)
            for i in range(3):
                results[seed * 10 + i] = _infer(ws, _obs(seed * 10 + i))["actions"]

    with ServerThread(server) as port:
        threads = [threading.Thread(target=client, args=(s, port)) for s in range(1, 5)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
    assert len(results) == 12
    for seed, actions in results.items():
        np.testing.assert_allclose(actions, _expected_chunk(policy, _obs(seed)), atol=1e-5)
    assert server._batcher.batches < 12  # some requests shared a policy call


def test_auth_off_accepts_and_auth_on_needs_the_token():
    with ServerThread(_server()) as port, connect(f"ws://127.0.0.1:{port}") as ws:
        assert msgpack_numpy.unpackb(ws.recv(timeout=30))["auth"] is False
    server = _server(api_key="s3cret")
    with ServerThread(server) as port:
        for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": "s3cret"}):
            with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
                connect(f"ws://127.0.0.1:{port}", additional_headers=headers)
        with connect(f"ws://127.0.0.1:{port}", additional_headers={"Authorization": "Api-Key s3cret"}) as ws:
            assert msgpack_numpy.unpackb(ws.recv(timeout=30))["auth"] is True
            assert _infer(ws, _obs())["actions"].shape == (CHUNK, ACTION_DIM)
    assert server.stats.rejected_auth == 3


def test_limits_enforced_on_every_served_action_and_counted():
    limits = ActionLimits(action_dim=ACTION_DIM, low=[-0.05] * ACTION_DIM, high=[0.05] * ACTION_DIM,
                          max_delta=[0.02] * ACTION_DIM)
    server = _server(limits=limits, actions_per_reply=2)
    served, clipped = [], 0
    with ServerThread(server) as port, connect(f"ws://127.0.0.1:{port}") as ws:
        assert msgpack_numpy.unpackb(ws.recv(timeout=30))["action_limits"]["max_delta"] == pytest.approx([0.02] * 4)
        for i in range(6):
            reply = _infer(ws, _obs(i))
            served.append(reply["actions"])
            clipped += reply["safety"]["clipped"]
            assert reply["safety"]["clipped_total"] == clipped
    actions = np.concatenate(served)
    assert (actions >= limits.low).all() and (actions <= limits.high).all()
    assert (np.abs(np.diff(actions, axis=0)) <= limits.max_delta + 1e-6).all()
    assert clipped > 0  # the tiny policy's raw actions are far outside +-0.05


def test_binds_loopback_by_default_and_serves_health(compose):
    assert ServerConfig().host == "127.0.0.1"
    assert compose("serve").server.host == "127.0.0.1"
    import urllib.request

    with ServerThread(_server()) as port:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read() == b"OK\n"


ROBOT_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from openpi_client import msgpack_numpy, websocket_client_policy

    port, api_key, cam, state = int(sys.argv[1]), sys.argv[2] or None, sys.argv[3], sys.argv[4]
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=api_key)
    meta = client.get_server_metadata()
    h, w, _ = meta["observation"]["required"][cam]["shape"]
    rng = np.random.default_rng(int(sys.argv[5]))
    out = {"numpy": np.__version__, "metadata_policy": meta["policy"], "replies": []}
    for _ in range(3):
        obs = {cam: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
               state: rng.normal(size=meta["observation"]["required"][state]["shape"]).astype(np.float32),
               "prompt": "pick up the cube"}
        reply = client.infer(obs)
        out["replies"].append({"obs_image": obs[cam].tolist(), "obs_state": obs[state].tolist(),
                               "actions": reply["actions"].tolist(), "dtype": str(reply["actions"].dtype),
                               "timing": sorted(reply["server_timing"]), "safety": reply["safety"]})
    try:
        client.infer({cam: np.zeros((h, w, 3), np.float32), state: np.zeros(3, np.float32), "prompt": "x"})
    except RuntimeError as exc:
        out["error"] = str(exc)
    out["after_error_shape"] = list(client.infer(obs)["actions"].shape)
    sample = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(2.5), "t": "txt"}
    out["their_packb"] = msgpack_numpy.packb(sample).hex()
    print(json.dumps(out))
''')


@pytest.fixture
def robot_python() -> Path:
    if not ROBOT_PYTHON.exists():
        pytest.skip(f"{ROBOT_PYTHON} is missing: `make robot-venv` builds the openpi-client venv (make test does)")
    return ROBOT_PYTHON


def _run_robot(robot_python: Path, tmp_path: Path, port: int, api_key: str = "", seed: int = 0) -> dict:
    script = tmp_path / "robot.py"
    script.write_text(ROBOT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run([str(robot_python), str(script), str(port), api_key, CAM, STATE, str(seed)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openpi_client_round_trip_from_the_robot_venv(robot_python, tmp_path):
    policy = TinyChunkPolicy()
    with ServerThread(_server(policy, api_key="robot-token")) as port:
        out = _run_robot(robot_python, tmp_path, port, api_key="robot-token")
    assert out["numpy"].startswith("1.") and out["metadata_policy"] == "tiny-test"
    for reply in out["replies"]:
        obs = {CAM: np.array(reply["obs_image"], np.uint8), STATE: np.array(reply["obs_state"], np.float32),
               "prompt": "pick up the cube"}
        np.testing.assert_allclose(reply["actions"], _expected_chunk(policy, obs), atol=1e-6)
        assert reply["dtype"] == "float32" and reply["timing"][0] == "infer_ms"
    assert "wrong dtype float32, expected uint8" in out["error"]
    assert out["after_error_shape"] == [CHUNK, ACTION_DIM]
    # Their encoder, our decoder: the same arrays and scalars.
    theirs = msgpack_numpy.unpackb(bytes.fromhex(out["their_packb"]))
    np.testing.assert_array_equal(theirs["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert theirs["s"] == np.float32(2.5) and theirs["s"].dtype == np.float32 and theirs["t"] == "txt"


def test_openpi_client_is_refused_without_the_token(robot_python, tmp_path):
    with ServerThread(_server(api_key="robot-token")) as port:
        script = tmp_path / "robot.py"
        script.write_text(ROBOT_SCRIPT)
        done = subprocess.run([str(robot_python), str(script), str(port), "", CAM, STATE, "0"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "401" in done.stderr


def test_our_encoding_decodes_in_openpi_client(robot_python, tmp_path):
    sample = {"actions": np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4), "n": np.int32(3), "ok": True}
    (tmp_path / "ours.bin").write_bytes(msgpack_numpy.packb(sample))
    code = ("import sys; from openpi_client import msgpack_numpy as m; d = m.unpackb(open('ours.bin','rb').read()); "
            "print(d['actions'].dtype, d['actions'].shape, float(d['actions'].sum()), d['n'].dtype, int(d['n']), d['ok'])")
    done = subprocess.run([str(robot_python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["float32", "(2,", "4)", "4.0", "int32", "3", "True"]


def test_metadata_tells_the_robot_the_execution_and_temporal_ensembling_is_served_per_request():
    policy = TinyChunkPolicy()
    execution = {"mode": "temporal_ensemble", "chunk_size": CHUNK, "n_action_steps": CHUNK,
                 "temporal_ensemble_coeff": 0.5}
    server = PolicyServer(policy, SPEC, WIDE, CHUNK, ServerConfig(port=0), execution=execution)
    with ServerThread(server) as port, connect(f"ws://127.0.0.1:{port}") as ws:
        metadata = msgpack_numpy.unpackb(ws.recv(timeout=30))
        first, second = _infer(ws, _obs(1)), _infer(ws, _obs(2))
        restarted = _infer(ws, _obs(3, reset=True))
    assert metadata["execution"]["mode"] == "temporal_ensemble" and metadata["actions_per_reply"] == 1
    c1, c2, c3 = (_expected_chunk(policy, _obs(k)) for k in (1, 2, 3))
    # Step 2 has two predictions: chunk 1's action 1 (the older, weight 1) and chunk 2's action 0 (e^-0.5).
    w = np.exp(-0.5)
    np.testing.assert_allclose(first["actions"], c1[:1], atol=1e-6)
    np.testing.assert_allclose(second["actions"][0], (c1[1] + w * c2[0]) / (1 + w), atol=1e-5)
    np.testing.assert_allclose(restarted["actions"][0], c3[0], atol=1e-6)  # reset forgets the history
    assert second["predicted"] and first["actions"].shape == (1, ACTION_DIM)
