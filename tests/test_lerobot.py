"""The policy inside LeRobot's own tools: `lerobot-train --policy.type=vst_vla` (a real CLI run) and
`lerobot-eval` on LeRobot's MetaWorld env (in-process, episodes cut to a few steps to stay CPU-sized)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policies.loading import load_policy
from policies.synthetic_dataset import make_synthetic_dataset

LEROBOT_TRAIN = Path(sys.executable).with_name("lerobot-train")


@pytest.fixture(scope="module")
def lerobot_checkpoint(tmp_path_factory) -> Path:
    """Two steps of `lerobot-train` on a small dataset; returns the checkpoint's pretrained_model dir."""
    tmp = tmp_path_factory.mktemp("lerobot")
    make_synthetic_dataset(tmp / "data", episodes=2, frames=8, image_size=64, cameras=("front",))
    command = [str(LEROBOT_TRAIN), "--policy.type=vst_vla", "--policy.discover_packages_path=policies",
               "--dataset.repo_id=local/data", f"--dataset.root={tmp / 'data'}", "--steps=2", "--batch_size=2",
               f"--output_dir={tmp / 'train'}", "--policy.push_to_hub=false", "--save_freq=2", "--log_freq=1",
               "--wandb.enable=false", "--num_workers=0", "--policy.device=cpu", "--policy.chunk_size=4",
               "--policy.n_action_steps=4", "--policy.head=l1_chunk"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step:2" in proc.stderr + proc.stdout
    # Issue 13: torchcodec's load failure (no FFmpeg here) printed a 106-line traceback twice for PNG frames.
    assert "libtorchcodec" not in proc.stderr + proc.stdout and "cannot be loaded" not in proc.stderr
    return tmp / "train" / "checkpoints" / "000002" / "pretrained_model"


def test_lerobot_train_checkpoint_is_a_vst_vla_policy(lerobot_checkpoint):
    config = json.loads((lerobot_checkpoint / "config.json").read_text())
    assert config["type"] == "vst_vla" and config["head"] == "l1_chunk"
    policy = load_policy(lerobot_checkpoint)
    batch = {"observation.images.front": torch.rand(1, 3, 64, 64), "observation.state": torch.randn(1, 4),
             "task": ["pick up the red block"]}
    assert policy.predict_action_chunk(batch).shape == (1, 4, 4)


def test_lerobot_eval_runs_the_policy_in_metaworld(lerobot_checkpoint, tmp_path, monkeypatch):
    from lerobot.envs import metaworld as lerobot_metaworld
    from lerobot.scripts import lerobot_eval

    original_init = lerobot_metaworld.MetaworldEnv.__init__

    def short_episodes(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._max_episode_steps = 6  # LeRobot hard-codes 500 steps: minutes on a shared CPU

    monkeypatch.setattr(lerobot_metaworld.MetaworldEnv, "__init__", short_episodes)
    monkeypatch.setattr(sys, "argv", [
        "lerobot-eval", f"--policy.path={lerobot_checkpoint}", "--discover_packages_path=policies",
        "--env.type=metaworld", "--env.task=pick-place-v3", "--eval.n_episodes=1", "--eval.batch_size=1",
        "--eval.use_async_envs=false", "--policy.device=cpu", f"--output_dir={tmp_path}",
        '--rename_map={"observation.image": "observation.images.front"}'])
    lerobot_eval.main()
    info = json.loads((tmp_path / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
    assert 0.0 <= info["overall"]["pc_success"] <= 100.0
