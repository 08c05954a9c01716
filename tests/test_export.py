"""Export bundles of the real VST-VLA policy: offline load in a fresh directory, integrity, and serving it
to the real `openpi-client` through the `vst-vla serve` command."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.export import BundleError, export_bundle, load_bundle
from policies.safety import SafetyFilter
from policies.serving.protocol import to_batch, validate_observation
from vst_vla.atomic import OutputDirError

REPO = Path(__file__).resolve().parents[1]
ROBOT_PYTHON = REPO / ".venv-robot" / "bin" / "python"
ROBOT_CLIENT = REPO / "policies" / "serving" / "robot_client.py"
CAM, STATE = "observation.images.front", "observation.state"
STATE_DIM, ACTION_DIM, CHUNK, IMAGE = 4, 4, 4, 32


def _make_policy_dir(out: Path, backbone, head: str = "l1_chunk") -> Path:
    """A real tiny VST-VLA policy (tiny Qwen2.5-VL + head) with dataset-like statistics, saved as training does."""
    from lerobot.configs import FeatureType, PolicyFeature

    from policies.configuration_vst_vla import VSTVLAConfig
    from policies.loading import new_policy, save_policy

    config = VSTVLAConfig(head=head, chunk_size=CHUNK, n_action_steps=CHUNK, image_size=56, device="cpu",
                          flow_steps=2, input_features={
                              CAM: PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
                              STATE: PolicyFeature(FeatureType.STATE, (STATE_DIM,))},
                          output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))})
    rng = np.random.default_rng(0)

    def stats(dim: int) -> dict:
        low, high = -rng.uniform(0.5, 1.0, dim), rng.uniform(0.5, 1.0, dim)
        return {"min": low, "max": high, "mean": (low + high) / 2, "std": (high - low) / 4, "q01": 0.9 * low,
                "q99": 0.9 * high}

    torch.manual_seed(0)
    loaded = new_policy(config, {STATE: stats(STATE_DIM), "action": stats(ACTION_DIM)},
                        backbone=copy.deepcopy(backbone))
    return save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, out)


def _observations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{CAM: rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
             STATE: rng.normal(size=STATE_DIM).astype(np.float32), "prompt": "push the button"} for _ in range(n)]


# Runs in the fresh directory: our package is importable, nothing from the training run is.
FRESH_SCRIPT = """
import sys, numpy as np, torch
from policies.export import load_bundle
from policies.serving.protocol import to_batch, validate_observation
from vst_vla.atomic import OutputDirError
bundle = load_bundle("bundle")
data = np.load("inputs.npz")
obs = [{"%(cam)s": data["images"][i], "%(state)s": data["states"][i], "prompt": "push the button"}
       for i in range(len(data["images"]))]
batch = to_batch([validate_observation(o, bundle.spec) for o in obs], bundle.spec)
torch.manual_seed(1)
chunk = bundle.policy.predict_action_chunk(batch).numpy()
bundle.policy.reset()
torch.manual_seed(2)
steps = np.stack([bundle.policy.select_action(batch).numpy() for _ in range(%(steps)d)])
np.savez("outputs.npz", chunk=chunk, steps=steps)
"""


def _training_side(policy_dir: Path, observations: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    from policies import load_policy

    policy = load_policy(str(policy_dir))
    spec = load_spec(policy)
    batch = to_batch([validate_observation(o, spec) for o in observations], spec)
    torch.manual_seed(1)
    chunk = policy.predict_action_chunk(batch).numpy()
    policy.reset()
    torch.manual_seed(2)
    steps = np.stack([policy.select_action(batch).numpy() for _ in range(CHUNK + 1)])
    return chunk, steps


def load_spec(policy):
    from policies.serving.protocol import ObservationSpec

    return ObservationSpec.from_features(policy.config.input_features)


@pytest.mark.parametrize("head", ["l1_chunk", "flow"])
def test_export_then_load_in_a_fresh_directory_gives_the_same_actions(tmp_path, tiny_backbone, head):
    policy_dir = _make_policy_dir(tmp_path / "train" / "policy", tiny_backbone, head)
    observations = _observations(2)
    expected_chunk, expected_steps = _training_side(policy_dir, observations)
    export_bundle(policy_dir, tmp_path / "bundle", {"card": {"training_data": "synthetic test statistics"},
                                                    "torchscript_heads": True})
    shutil.rmtree(tmp_path / "train")  # nothing from the training run is left

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copytree(tmp_path / "bundle", fresh / "bundle")
    np.savez(fresh / "inputs.npz", images=np.stack([o[CAM] for o in observations]),
             states=np.stack([o[STATE] for o in observations]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(fresh / "hf"),
           "VST_VLA_CACHE": str(fresh / "empty-cache"), "OMP_NUM_THREADS": "1"}
    script = FRESH_SCRIPT % {"cam": CAM, "state": STATE, "steps": CHUNK + 1}
    done = subprocess.run([sys.executable, "-c", script], cwd=fresh, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (fresh / "empty-cache").exists()  # the tiny preset was not rebuilt: the bundle carried the backbone
    out = np.load(fresh / "outputs.npz")
    assert out["chunk"].shape == (2, CHUNK, ACTION_DIM)
    np.testing.assert_allclose(out["chunk"], expected_chunk, atol=1e-5)
    np.testing.assert_allclose(out["steps"], expected_steps, atol=1e-5)
    _check_torchscript_head(tmp_path / "bundle", head)


def _check_torchscript_head(bundle_path: Path, head: str) -> None:
    """The traced head, reloaded, on a batch of another size and prompt length, matches PyTorch."""
    from policies.export import sample_batch
    from policies.head_export import backbone_features

    record = json.loads((bundle_path / "bundle.json").read_text())["torchscript"]
    assert record["head"] == head and record["max_abs_diff_vs_pytorch"] < 1e-4
    bundle = load_bundle(bundle_path)
    traced = torch.jit.load(str(bundle_path / "heads" / record["file"]))  # our own artifact, for this check only
    batch = sample_batch(bundle.spec, prompts=("a", "close the top drawer slowly", "push"), seed=3)
    inner = bundle.policy.policy
    with torch.inference_mode():
        processed, inputs, hidden = backbone_features(bundle.policy, batch)
        if head == "l1_chunk":
            got = traced(hidden, inputs.attention_mask)
            want = inner.predict_action_chunk(processed)
        else:
            noise = torch.randn(3, CHUNK, ACTION_DIM)
            got = traced(hidden, inputs.attention_mask, noise)
            want = inner.predict_action_chunk(processed, noise=noise)
    assert got.shape == (3, CHUNK, ACTION_DIM)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, tiny_backbone) -> Path:
    """A bundle written by the `vst-vla export` entry point with its shipped config and a few overrides."""
    root = tmp_path_factory.mktemp("bundle")
    previous_umask = os.umask(0o022)  # what a user sharing the bundle with a serving account has
    try:
        policy_dir = _make_policy_dir(root / "policy", tiny_backbone)
        return _export_bundle(root, policy_dir)
    finally:
        os.umask(previous_umask)


def _export_bundle(root: Path, policy_dir: Path) -> Path:
    from hydra import compose, initialize_config_dir

    from policies.export import run
    from vst_vla.paths import config_dir

    results = root / "eval.json"
    results.write_text(json.dumps({"task": "button-press-v3", "success_rate": 0.4, "episodes": 10}))
    overrides = [f"policy_path={policy_dir}", f"output_dir={root / 'export'}", "limits.margin=0.0",
                 "limits.max_delta_fraction=0.25", "limits.names=[dx,dy,dz,grip]", "card.robot=test arm",
                 "card.fps=10", "card.training_data=synthetic", f"card.eval_results={results}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="export"):
        cfg = compose(config_name="export", overrides=overrides)
    bundle = run(cfg)
    assert bundle == root / "export" / "bundle"
    return bundle


def test_bundle_holds_weights_config_processor_stats_limits_spec_and_card(bundle_dir):
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    for name in ("policy/model.safetensors", "policy/config.json", "policy/backbone/tokenizer.json",
                 "policy/backbone/processor_config.json", "normalization.json", "action_limits.json",
                 "robot_spec.json", "README.md"):
        assert name in manifest["files"], name
    assert not [p for p in bundle_dir.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    stats = json.loads((bundle_dir / "normalization.json").read_text())
    limits = json.loads((bundle_dir / "action_limits.json").read_text())
    np.testing.assert_allclose(limits["low"], stats["action"]["min"], atol=1e-6)  # margin 0
    span = np.array(stats["action"]["max"]) - np.array(stats["action"]["min"])
    np.testing.assert_allclose(limits["max_delta"], 0.25 * span, atol=1e-6)
    spec = json.loads((bundle_dir / "robot_spec.json").read_text())
    assert spec["observation"]["required"][CAM] == {"shape": [IMAGE, IMAGE, 3], "dtype": "uint8"}
    card = (bundle_dir / "README.md").read_text()
    assert "test arm" in card and "| success_rate | 0.4 |" in card and "dx, dy, dz, grip" in card
    assert manifest["policy"]["head"] == "l1_chunk" and manifest["policy"]["action_dim"] == ACTION_DIM


def test_policy_and_bundle_are_readable_by_another_account_under_umask_022(bundle_dir):
    """Saved with mkstemp/mkdtemp they were 0600/0700, unreadable to a separate serving account."""
    for root in (bundle_dir, bundle_dir.parent.parent / "policy"):
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
        assert {m for p, m in modes.items() if p.is_file()} == {0o644}
        assert {m for p, m in modes.items() if p.is_dir()} == {0o755}


def test_export_into_a_foreign_folder_is_refused_even_with_overwrite(bundle_dir, tmp_path):
    foreign = tmp_path / "bundle"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(OutputDirError, match=r"holds files vst-vla did not write \(notes.txt\)"):
        export_bundle(bundle_dir.parent.parent / "policy", foreign, {"overwrite": True})
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(OutputDirError, match="already holds a complete vst_vla-bundle; pass overwrite=true"):
        export_bundle(bundle_dir.parent.parent / "policy", bundle_dir, {})


def test_corrupted_or_incomplete_bundles_and_pickled_weights_are_refused(bundle_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    weights = broken / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="policy/model.safetensors does not match its sha256"):
        load_bundle(broken)
    (broken / "_COMPLETE").unlink()
    with pytest.raises(BundleError, match="not a complete bundle"):
        load_bundle(broken)
    pickled = tmp_path / "pickled"
    shutil.copytree(bundle_dir / "policy", pickled)
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(BundleError, match=r"pickled files \['pytorch_model.bin'\]"):
        export_bundle(pickled, tmp_path / "out")
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        (pickled / "pytorch_model.bin").unlink()
        (pickled / "model.safetensors").unlink()
        export_bundle(pickled, tmp_path / "out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"vst-vla serve exited: {process.stdout.read()[-3000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("vst-vla serve did not come up")


def test_vst_vla_serve_answers_openpi_client_with_the_bundle_policy(bundle_dir, tmp_path):
    if not ROBOT_PYTHON.exists():
        pytest.skip(f"{ROBOT_PYTHON} is missing: `make robot-venv` builds the openpi-client venv (make test does)")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VST_VLA_OUTPUT_ROOT": str(tmp_path / "outputs")}
    server = subprocess.Popen([str(Path(sys.executable).parent / "vst-vla"), "serve", f"bundle={bundle_dir}",
                               f"server.port={port}", "server.api_key=robot-token"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(port, server)
        robot_env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        done = subprocess.run([str(ROBOT_PYTHON), str(ROBOT_CLIENT), "--port", str(port), "--api-key",
                               "robot-token", "--steps", "3", "--async-steps", "20", "--fps", "20",
                               "--out", str(tmp_path / "exchange.json")],
                              cwd=tmp_path, env=robot_env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(30)
    exchange = json.loads((tmp_path / "exchange.json").read_text())
    assert exchange["numpy"].startswith("1.")  # the robot side really is the numpy<2 openpi-client venv
    assert exchange["metadata"]["policy"]["head"] == "l1_chunk"
    bundle = load_bundle(bundle_dir)
    safety = SafetyFilter(bundle.limits)
    for step in exchange["steps"]:
        obs = {key: np.array(v["values"], dtype=v["dtype"]) if isinstance(v, dict) else v
               for key, v in step["observation"].items()}
        chunk = bundle.policy.predict_action_chunk(to_batch([validate_observation(obs, bundle.spec)], bundle.spec))
        expected, report = safety.apply(chunk[0].numpy())
        actions = step["reply"]["actions"]
        assert actions["dtype"] == "float32" and actions["shape"] == [CHUNK, ACTION_DIM]
        np.testing.assert_allclose(actions["values"], expected, atol=1e-5)
        assert step["reply"]["safety"]["clipped"] == report.clipped
        assert (np.array(actions["values"]) <= bundle.limits.high).all()
    assert "error: key 'observation.images.front': wrong dtype float32, expected uint8" in exchange["malformed_reply"]
    assert exchange["after_error"]["actions"]["shape"] == [CHUNK, ACTION_DIM]
    # The metadata tells the robot how to execute chunks; the asynchronous loop ran on it.
    assert exchange["metadata"]["execution"] == {"mode": "open_loop", "chunk_size": CHUNK, "n_action_steps": CHUNK,
                                                 "temporal_ensemble_coeff": 0.01, "inference_delay_steps": 0}
    ran = exchange["async"]
    assert ran["executed"] + ran["starved_steps"] == 20 and ran["executed"] >= CHUNK and ran["requests"] >= 1
