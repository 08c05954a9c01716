"""Rollout evaluation: the scripted expert succeeds and a random policy fails through the same path;
`vst-vla eval-sim` writes its JSON, markdown and videos; a malformed policy output fails loudly."""

from __future__ import annotations

import json

import pytest
import torch
from kill_helpers import interrupt_on_call
from omegaconf import OmegaConf

from sim import rollout as rollout_module
from sim.eval_sim import run as eval_sim_run
from sim.experts import RandomPolicy, ScriptedExpert
from sim.rollout import evaluate

ENV = {"name": "metaworld", "task": "pick-place", "cameras": ["corner2"], "image_size": 32, "max_episode_steps": 80}


def test_expert_succeeds_and_random_fails_through_the_same_evaluator():
    env_cfg = OmegaConf.create(ENV)
    expert = evaluate(ScriptedExpert(), env_cfg, n_episodes=2, n_envs=2, vector_mode="sync", progress=False)
    random = evaluate(RandomPolicy(), env_cfg, n_episodes=2, n_envs=2, vector_mode="sync", progress=False)
    assert expert.successes == 2 and all(e.length < 80 for e in expert.episodes)
    assert random.successes == 0 and all(e.length == 80 for e in random.episodes)
    assert [e.seed for e in expert.episodes] == [1000, 1001]


def test_eval_sim_command_writes_reports_and_videos_with_async_envs(compose, tmp_path):
    cfg = compose("eval-sim", ["policy=expert", "task=reach", "episodes=2", "n_envs=2", "vector=async",
                               "n_videos=1", "env.image_size=32", "env.max_episode_steps=60",
                               f"output_dir={tmp_path}"])
    result = eval_sim_run(cfg)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["success_rate"] == result.success_rate == 1.0
    assert report["ci95_low"] < 1.0 and report["policy"] == "ScriptedExpert"
    assert len(report["episodes"]) == 2 and {"success", "length", "sum_reward"} <= set(report["episodes"][0])
    assert "95 % Wilson interval" in (tmp_path / "eval.md").read_text()
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert report["episodes"][0]["video"] == f"videos/{videos[0].name}"


def test_interrupted_eval_sim_keeps_its_finished_episodes_and_equals_an_uninterrupted_run(compose, tmp_path,
                                                                                           monkeypatch):
    overrides = ["policy=random", "task=reach", "episodes=3", "n_envs=2", "vector=sync", "n_videos=0",
                 "env.image_size=32", "env.max_episode_steps=15"]
    journal = interrupt_on_call(monkeypatch, rollout_module, "journal_episode", call=2)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        eval_sim_run(compose("eval-sim", [*overrides, f"output_dir={resumed}"]))
    assert not (resumed / "eval.json").exists()
    assert [p.name for p in (resumed / ".eval.partial" / "reach-v3").iterdir()] == ["000000.json"]
    monkeypatch.setattr(rollout_module, "journal_episode", journal)
    eval_sim_run(compose("eval-sim", [*overrides, f"output_dir={resumed}"]))
    eval_sim_run(compose("eval-sim", [*overrides, f"output_dir={tmp_path / 'uninterrupted'}"]))
    report, reference = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("resumed", "uninterrupted"))
    assert [e["seed"] for e in report["episodes"]] == [1000, 1001, 1002]
    assert report["episodes"] == reference["episodes"] and report["mean_sum_reward"] == reference["mean_sum_reward"]
    assert sorted(p.name for p in resumed.iterdir()) == ["eval.json", "eval.md"]


class _WrongShapePolicy:
    def reset(self) -> None:
        pass

    def select_action(self, batch):
        return torch.zeros(len(batch["task"]), 7)


def test_wrong_action_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"action_dim=4"):
        evaluate(_WrongShapePolicy(), OmegaConf.create(ENV), n_episodes=1, progress=False)
