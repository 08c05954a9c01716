"""Simulated inference latency in evaluation (`sim.latency`): the executed action sequence under delay d for
each execution mode equals the hand-derived one on a scripted chunk policy; at d = 0 the wrapper executes
exactly what the real policy's own `select_action` does; mean squared jerk by hand; `vst-vla eval-sim
inference_delay_steps=d` runs a saved tiny flow policy with RTC and keeps its journal per delay and mode."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from policy_fixtures import front_camera_observation, tiny_vla_policy

from sim.eval_report import mean_squared_jerk
from sim.eval_sim import run as eval_sim_run
from sim.latency import DelayedChunkPolicy


class ScriptedChunkPolicy:
    """A chunk policy with known outputs: the chunk for the observation of step t (its `observation.state`)
    has action i = 10 t + i in both of its 2 dimensions. Records the RTC keywords of every request."""

    def __init__(self, mode: str, chunk_size: int, n_action_steps: int, coeff: float = 0.0) -> None:
        self.config = SimpleNamespace(execution_mode=mode, chunk_size=chunk_size, n_action_steps=n_action_steps,
                                      temporal_ensemble_coeff=coeff)
        self.requests: list[tuple[int, dict]] = []

    def reset(self) -> None:
        self.requests.clear()

    def predict_action_chunk(self, batch: dict, **kwargs) -> torch.Tensor:
        t = int(batch["observation.state"][0, 0])
        self.requests.append((t, kwargs))
        values = 10.0 * t + torch.arange(self.config.chunk_size, dtype=torch.float32)
        return values[None, :, None].expand(1, -1, 2).clone()


def _execute(policy, steps: int) -> np.ndarray:
    policy.reset()
    return np.stack([policy.select_action({"observation.state": torch.full((1, 4), float(t))})[0].numpy()
                     for t in range(steps)])


def test_open_loop_under_delay_holds_the_pose_while_each_chunk_is_computed():
    scripted = ScriptedChunkPolicy("open_loop", chunk_size=4, n_action_steps=3)
    delayed = DelayedChunkPolicy(scripted, delay=2)
    executed = _execute(delayed, 10)
    # Chunk 0 is awaited before the first step: 0, 1, 2. Step 3 asks again (queue empty); the chunk of
    # observation 3 arrives at step 5: steps 3, 4 hold the pose (xyz 0, gripper 2), then 30, 31, 32 run from the
    # chunk's start; step 8 asks again: hold (0, 32) twice.
    assert executed[:, 0].tolist() == [0, 1, 2, 0, 0, 30, 31, 32, 0, 0]
    assert executed[:, 1].tolist() == [0, 1, 2, 2, 2, 30, 31, 32, 32, 32]
    assert [t for t, _ in scripted.requests] == [0, 3, 8] and delayed.held_steps == 4


def test_temporal_ensemble_under_delay_averages_the_predictions_that_have_arrived():
    scripted = ScriptedChunkPolicy("temporal_ensemble", chunk_size=4, n_action_steps=1, coeff=float(np.log(2)))
    executed = _execute(DelayedChunkPolicy(scripted, delay=2), 7)
    # A chunk per step; observation j's chunk arrives at j + 2 (chunk 0 at 0) and holds 10 j + i for step j + i.
    # Weights 1, 1/2 oldest first. Steps 0-2: chunk 0 alone (0, 1, 2). Step 3: chunk 0's 3 and chunk 1's 12:
    # (3 + 6) / 1.5 = 6. Step k >= 4: chunk k-3's 10k - 27 and chunk k-2's 10k - 18: (15k - 36) / 1.5 = 10k - 24.
    np.testing.assert_allclose(executed[:, 0], [0, 1, 2, 6, 16, 26, 36], rtol=1e-6)
    assert [t for t, _ in scripted.requests] == list(range(7))


def test_rtc_under_delay_keeps_the_committed_prefix_and_sends_the_queue():
    scripted = ScriptedChunkPolicy("rtc", chunk_size=6, n_action_steps=3)
    executed = _execute(DelayedChunkPolicy(scripted, delay=2), 10)
    # Requests every 3 steps. Observation 3's chunk arrives at 5: steps 3, 4 are the committed 3, 4 of chunk 0,
    # then 32, 33, 34; observation 6's arrives at 8: 33, 34 committed, then 62, 63.
    assert executed[:, 0].tolist() == [0, 1, 2, 3, 4, 32, 33, 34, 62, 63]
    (t0, first), (t3, second), (t6, third) = scripted.requests[:3]
    assert (t0, first) == (0, {}) and (t3, t6) == (3, 6)
    assert second["inference_delay"] == 2 and third["inference_delay"] == 2
    assert second["prev_chunk_left_over"][0, :, 0].tolist() == [3, 4, 5]  # chunk 0's actions for steps 3-5
    assert third["prev_chunk_left_over"][0, :, 0].tolist() == [33, 34, 35]


def test_delays_a_mode_cannot_honour_are_refused_with_the_settings():
    with pytest.raises(ValueError, match=r"inference_delay_steps <= n_action_steps \(3\)"):
        DelayedChunkPolicy(ScriptedChunkPolicy("rtc", 6, 3), delay=4)
    with pytest.raises(ValueError, match="chunk_size=4"):
        DelayedChunkPolicy(ScriptedChunkPolicy("temporal_ensemble", 4, 1), delay=4)
    with pytest.raises(ValueError, match="predict_action_chunk"):
        DelayedChunkPolicy(SimpleNamespace(reset=lambda: None), delay=1)


def test_mean_squared_jerk_by_hand():
    # x = 0, 1, 8, 27, 64 (t^3): third differences 6, 6; y = 0, 0, 0, 1, 0: third differences
    # 1 - 0 + 0 - 0 = 1 and 0 - 3 + 0 - 0 = -3. Squared norms 36 + 1 = 37 and 36 + 9 = 45: mean 41.
    actions = np.array([[0, 0], [1, 0], [8, 0], [27, 1], [64, 0]], dtype=np.float64)
    assert mean_squared_jerk(actions) == pytest.approx(41.0)
    assert mean_squared_jerk(actions[:3]) is None


# --- the real policy --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("head", "mode"), [("flow", "open_loop"), ("l1_chunk", "temporal_ensemble"), ("flow", "rtc")])
def test_without_delay_the_wrapper_executes_what_the_policy_itself_does(tiny_backbone, head, mode):
    policy = tiny_vla_policy(tiny_backbone, head, execution_mode=mode, temporal_ensemble_coeff=0.5)
    runs = []
    for actor in (policy, DelayedChunkPolicy(policy, delay=0)):
        actor.reset()
        torch.manual_seed(7)  # the flow head's noise: the same draws in the same order
        with torch.inference_mode():
            runs.append(torch.stack([actor.select_action(front_camera_observation(k))[0] for k in range(7)]))
    torch.testing.assert_close(runs[1], runs[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def flow_policy_dir(tiny_backbone, tmp_path_factory):
    """A saved (untrained) tiny flow policy for MetaWorld's corner2 camera at 32 px."""
    from policies.configuration_vst_vla import VSTVLAConfig
    from policies.data import dataset_stats, open_dataset, set_features
    from policies.loading import new_policy, save_policy
    from policies.synthetic_dataset import make_synthetic_dataset

    root = tmp_path_factory.mktemp("latency")
    make_synthetic_dataset(root / "data", episodes=1, frames=6, image_size=32, cameras=("corner2",))
    config = VSTVLAConfig(head="flow", chunk_size=6, n_action_steps=3, image_size=56, flow_steps=2, device="cpu")
    dataset = open_dataset(root / "data", set_features(config, open_dataset(root / "data").meta.features))
    loaded = new_policy(config, dataset_stats(dataset), backbone=copy.deepcopy(tiny_backbone))
    return save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, root / "policy")


def test_eval_sim_with_delay_runs_rtc_and_journals_per_delay_and_mode(compose, flow_policy_dir, tmp_path):
    overrides = ["policy=vst_vla", f"policy.path={flow_policy_dir}", "task=reach", "episodes=1", "n_envs=1",
                 "vector=sync", "n_videos=0", "env.image_size=32", "env.max_episode_steps=8"]
    out = tmp_path / "rtc_d2"
    eval_sim_run(compose("eval-sim", [*overrides, "policy.execution_mode=rtc", "inference_delay_steps=2",
                                      f"output_dir={out}"]))
    report = json.loads((out / "eval.json").read_text())
    assert report["meta"]["latency"] == {"inference_delay_steps": 2, "execution_mode": "rtc", "chunk_size": 6,
                                         "n_action_steps": 3}
    assert report["episodes"][0]["length"] == 8 and report["mean_sq_jerk"] > 0
    assert "under 2 steps of simulated inference latency" in (out / "eval.md").read_text()


def test_an_interrupted_evaluation_at_another_delay_is_not_resumed(compose, flow_policy_dir, tmp_path, monkeypatch):
    from sim import rollout as rollout_module

    overrides = ["policy=vst_vla", f"policy.path={flow_policy_dir}", "policy.execution_mode=open_loop", "task=reach",
                 "episodes=2", "n_envs=1", "vector=sync", "n_videos=0", "env.image_size=32",
                 "env.max_episode_steps=8", f"output_dir={tmp_path}"]
    journal = rollout_module.journal_episode

    def interrupted_after_journaling(*args, **kwargs):
        journal(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(rollout_module, "journal_episode", interrupted_after_journaling)
    with pytest.raises(KeyboardInterrupt):
        eval_sim_run(compose("eval-sim", [*overrides, "inference_delay_steps=2"]))
    at_delay_2 = json.loads((tmp_path / ".eval.partial" / "reach-v3" / "000000.json").read_text())
    monkeypatch.setattr(rollout_module, "journal_episode", journal)
    report = eval_sim_run(compose("eval-sim", [*overrides, "inference_delay_steps=4"])).to_dict()
    # 8 steps, 3 actions per chunk: d = 2 runs 3 + hold 2 + 3, d = 4 runs 3 + hold 4 + 1: other actions, so
    # a journal kept across delays would show d = 2's jerk here.
    assert report["meta"]["latency"]["inference_delay_steps"] == 4
    assert report["episodes"][0]["mean_sq_jerk"] != pytest.approx(at_delay_2["mean_sq_jerk"])


def test_latency_table_gathers_cells_by_mode_and_delay(tmp_path):
    from sim.eval_report import Episode, EvalResult
    from sim.latency_table import main, read_cells

    def cell(name: str, mode: str, delay: int, wins: list[bool], seed: int = 1000) -> None:
        episodes = [Episode("reach-v3", seed + i, win, 10, 1.0, mean_sq_jerk=float(delay + 1))
                    for i, win in enumerate(wins)]
        meta = {"tasks": ["reach-v3"], "seed": seed, "latency": {"inference_delay_steps": delay, "execution_mode": mode}}
        EvalResult("p", episodes, 1, "sync", 1.0, 40, meta=meta).write(tmp_path / name)

    cell("rtc_d4", "rtc", 4, [True, True, False, False])
    cell("open_loop_d4", "open_loop", 4, [True, False, False, False])
    cell("open_loop_d0", "open_loop", 0, [True, True, True, False])
    main([str(tmp_path)])
    rows = (tmp_path / "latency.md").read_text().splitlines()
    # Wilson 95 % for 3/4: centre (0.75 + 1.92/4) / (1 + 3.84/4) = 0.628, half 0.325: 30 % - 95 %.
    assert rows[4] == "| open_loop | 0 | 3/4 = 75.0% | 30% - 95% | 1 | 10.0 |"
    assert [row.split(" | ")[:2] for row in rows[5:]] == [["| open_loop", "4"], ["| rtc", "4"]]
    cell("other_seeds", "rtc", 2, [True] * 4, seed=0)
    with pytest.raises(ValueError, match="share their seeds"):
        read_cells(tmp_path)
