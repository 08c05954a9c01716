"""MetaWorld envs: every tested task resets and steps with the declared observations; seeds reproduce
episodes; observations become LeRobot batches exactly as lerobot-eval builds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import data_equivalence

from sim.eval_report import wilson_interval
from sim.metaworld_env import MetaWorldEnv
from sim.policy_io import observation_to_batch
from sim.tasks import (
    TESTED_TASKS,
    all_tasks,
    canonical_task,
    instruction,
    resolve_tasks,
    task_for_instruction,
)


@pytest.mark.parametrize("task", TESTED_TASKS)
def test_task_resets_and_steps_with_declared_observations(task):
    env = MetaWorldEnv(task, image_size=48, max_episode_steps=5)
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(5):
            assert env.observation_space.contains(obs), {k: (v.shape, v.dtype) for k, v in obs.items()}
            for value in obs.values():
                assert np.all(np.isfinite(value))
            obs, reward, _terminated, truncated, info = env.step(env.action_space.sample())
            assert np.isfinite(reward) and isinstance(info["is_success"], bool)
        assert truncated, "the episode must be truncated at max_episode_steps"
        image = obs["observation.images.corner2"]
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and image.std() > 5  # not a blank frame
        assert obs["observation.state"].shape == (4,) and obs["observation.state"].dtype == np.float32
        assert env.task_description == instruction(task)
    finally:
        env.close()


def test_same_seed_same_episode_and_different_seed_differs():
    env = MetaWorldEnv("push", image_size=32, cameras=["corner2", "topview"])
    try:
        first, _ = env.reset(seed=7)
        again, _ = env.reset(seed=7)
        other, _ = env.reset(seed=8)
    finally:
        env.close()
    assert data_equivalence(first, again)
    assert not np.allclose(first["observation.environment_state"], other["observation.environment_state"])
    assert set(first) == {"observation.images.corner2", "observation.images.topview", "observation.state",
                          "observation.environment_state"}


def test_every_task_by_name_and_unique_instructions():
    assert len(all_tasks()) == 50
    assert canonical_task("pick-place") == canonical_task("metaworld-pick-place-v3") == "pick-place-v3"
    assert len(task_for_instruction()) == 50  # the expert finds its task from the instruction
    assert len(resolve_tasks("mt10")) == 10 and resolve_tasks("reach,mt10")[0] == "reach-v3"
    with pytest.raises(ValueError, match="unknown MetaWorld task 'pick-plcae'"):
        canonical_task("pick-plcae")


def test_observation_to_batch_matches_lerobot_eval_format():
    rng = np.random.default_rng(0)
    obs = {"observation.images.corner2": rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
           "observation.state": rng.normal(size=(3, 4)).astype(np.float32),
           "observation.environment_state": rng.normal(size=(3, 39)).astype(np.float32)}
    batch = observation_to_batch(obs, ["a", "b", "c"])
    image = batch["observation.images.corner2"]
    assert image.shape == (3, 3, 16, 16) and image.dtype == torch.float32
    # channel-first, scaled to [0, 1], values preserved: what lerobot's preprocess_observation does
    assert torch.allclose(image[1, :, 4, 5] * 255, torch.from_numpy(obs["observation.images.corner2"][1, 4, 5]).float())
    assert torch.equal(batch["observation.state"], torch.from_numpy(obs["observation.state"]))
    assert batch["observation.environment_state"].shape == (3, 39)
    assert batch["task"] == ["a", "b", "c"]
    single = observation_to_batch({k: v[0] for k, v in obs.items()}, "a")  # one env: a batch of one
    assert single["observation.state"].shape == (1, 4) and single["task"] == ["a"]


def test_wilson_interval_against_known_values():
    # Reference values from the closed form (z = 1.96): 0/10, 5/10, 10/10.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
