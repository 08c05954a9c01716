"""LIBERO under the anchors' protocol: keys, 180-degree images, 8-D state and init states against the raw
env; eval-sim with 7-D actions; the scripted expert recording a LeRobot dataset; the openpi-protocol client
driving a real policy server. The simulator tests skip when the `libero` extra is not installed."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sim.libero_protocol import quat_to_axis_angle

TASK = "libero_spatial/0"
SIZE = 32


libero = pytest.importorskip("libero.libero", reason="the LIBERO simulator is the optional extra: "
                             "pip install -e '.[libero]'")


FIRST_OBSERVATION: dict = {}


@pytest.fixture(scope="module")
def env():
    from sim.libero_env import LiberoEnv

    env = LiberoEnv(TASK, image_size=SIZE, hard_reset=False)  # the model is built once for the module
    # A fresh env's first reset, kept for comparison: later soft resets carry robosuite's gripper state over.
    FIRST_OBSERVATION.update(env.reset(seed=1000)[0])
    yield env
    env.close()


def test_reset_and_step_keys_shapes_and_rotation_against_the_raw_env(env):
    obs, info = env.reset(seed=1000)
    assert set(obs) == {"observation.images.image", "observation.images.image2", "observation.state",
                        "observation.environment_state"}
    assert obs["observation.images.image"].shape == (SIZE, SIZE, 3) and obs["observation.state"].shape == (8,)
    raw = env.raw_observation()
    for key, camera in (("observation.images.image", "agentview"), ("observation.images.image2", "robot0_eye_in_hand")):
        assert np.array_equal(obs[key], raw[f"{camera}_image"][::-1, ::-1])
        assert not np.array_equal(obs[key], raw[f"{camera}_image"])  # the scene is not symmetric
    expected_state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                                     raw["robot0_gripper_qpos"]])
    assert np.allclose(obs["observation.state"], expected_state, atol=1e-6)
    obs, _, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert obs["observation.state"].dtype == np.float32 and not terminated and not truncated
    assert info["is_success"] is False


def test_reset_sets_the_official_init_state_of_the_seed(env):
    table = env.init_state_table
    waits = env.num_steps_wait
    env.num_steps_wait = 0  # without the settling steps the sim state is exactly the stored one
    try:
        _, info = env.reset(seed=1003)
        assert info["init_state"] == 3  # 1003 mod 50
        assert np.allclose(env.raw_env.get_sim_state(), table[3])
        assert not np.allclose(env.raw_env.get_sim_state(), table[4])
    finally:
        env.num_steps_wait = waits


def test_eval_sim_runs_libero_with_seven_dim_actions(compose):
    from hydra.utils import instantiate

    from sim.rollout import evaluate

    cfg = compose("eval-sim", ["env=libero", f"task={TASK}", f"env.image_size={SIZE}", "env.max_episode_steps=3",
                               "env.hard_reset=false", "policy=random"])
    result = evaluate(instantiate(cfg.policy), cfg.env, n_episodes=1, n_envs=1, vector_mode="sync", progress=False)
    assert result.n_episodes == 1 and result.episodes[0].length == 3 and result.meta["tasks"] == [TASK]
    assert result.meta["camera"] == "observation.images.image"


@pytest.mark.slow
def test_expert_succeeds_and_collect_writes_lerobots_libero_keys_that_vla_trains_on(compose, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from sim.collect import collect_dataset
    from sim.libero_env import libero_instruction

    env_cfg = OmegaConf.create({"name": "libero", "task": TASK, "image_size": SIZE, "hard_reset": False})
    summary = collect_dataset(env_cfg, tmp_path / "ds", episodes=1, repo_id="local/libero", n_envs=1,
                              vector_mode="sync")
    assert summary.kept == 1, f"the expert failed {TASK}: {summary.per_task}"
    dataset = LeRobotDataset("local/libero", root=tmp_path / "ds")
    frame = dataset[0]
    assert {"observation.images.image", "observation.images.image2", "observation.state", "action"} <= set(frame)
    assert frame["observation.state"].shape == (8,) and frame["action"].shape == (7,)
    assert frame["observation.images.image"].shape == (3, SIZE, SIZE)
    assert frame["task"] == libero_instruction(TASK) and dataset.meta.robot_type == "panda"
    assert dataset.meta.fps == 20

    from hydra.utils import instantiate

    from policies.train import run as train_vla
    from vst_vla.paths import config_dir

    policy_dir = train_vla(compose("vla", ["experiment=tiny", f"dataset_root={tmp_path / 'ds'}",
                                           f"output_dir={tmp_path / 'vla'}", "train.max_steps=2",
                                           "train.save_steps=2", "train.report_to=[]"]))
    policy_cfg = OmegaConf.load(config_dir() / "policy" / "vst_vla.yaml")
    policy_cfg.path = str(policy_dir)
    policy = instantiate(policy_cfg)
    policy.reset()
    batch = {k: frame[k][None] for k in ("observation.images.image", "observation.images.image2",
                                         "observation.state")}
    action = policy.select_action({**batch, "task": [frame["task"]]})
    assert action.shape == (1, 7) and torch.isfinite(action).all()


class RecordingChunkPolicy(torch.nn.Module):
    """A real policy behind the server: lifts the arm (+z) in 3-action chunks and keeps what it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(n_action_steps=3, chunk_size=3, input_features={
            "observation.images.image": {"type": "VISUAL", "shape": [3, SIZE, SIZE]},
            "observation.images.image2": {"type": "VISUAL", "shape": [3, SIZE, SIZE]},
            "observation.state": {"type": "STATE", "shape": [8]}})
        self.batches: list[dict] = []
        self.lock = threading.Lock()

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        with self.lock:
            self.batches.append({k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in batch.items()})
        chunk = torch.zeros(len(batch["task"]), 3, 7)
        chunk[:, :, 2], chunk[:, :, 6] = 0.5, -1.0
        return chunk


def test_openpi_protocol_client_scores_a_served_policy(env):
    from policies.safety import ActionLimits
    from policies.serving.libero_client import evaluate_served
    from policies.serving.protocol import ObservationSpec
    from policies.serving.server import PolicyServer, ServerConfig, ServerThread
    from sim.libero_env import libero_instruction

    policy = RecordingChunkPolicy()
    spec = ObservationSpec.from_features(policy.config.input_features)
    server = PolicyServer(policy, spec, ActionLimits(action_dim=7), 3, ServerConfig(port=0))
    with ServerThread(server) as port:
        result = evaluate_served("127.0.0.1", port, [TASK], episodes=1, seed=1000, max_episode_steps=6,
                                 hard_reset=False)
    assert result.meta["layout"] == "lerobot" and result.episodes[0].length == 6
    assert len(policy.batches) == 2  # 6 steps from 3-action replies
    first = policy.batches[0]
    assert first["task"] == [libero_instruction(TASK)]
    obs = FIRST_OBSERVATION  # a fresh env's first reset from the same init state gives the same observation
    sent = (first["observation.images.image"][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(sent, obs["observation.images.image"])
    assert np.allclose(first["observation.state"][0].numpy(), obs["observation.state"], atol=1e-6)
    second = policy.batches[1]["observation.state"][0].numpy()
    assert second[2] > obs["observation.state"][2]  # the served +z actions moved the hand up
