"""Chunk execution modes: temporal ensembling (weights by hand and against LeRobot's ACT ensembler), real-time
chunking (the paper's prefix weights by hand; guided sampling keeps the committed prefix and joins the previous
chunk smoothly, on an analytic flow and on the real flow head), and the async robot-side queue (never starves
at a given delay, counted in steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_fixtures import front_camera_observation, tiny_vla_policy

from policies.execution.action_queue import AsyncChunkQueue, run_with_delay, threshold_for_delay
from policies.execution.rtc import RTCExecutor, guidance_weight, prefix_weights, rtc_sample
from policies.execution.temporal_ensemble import TemporalEnsembler


def test_temporal_ensemble_weights_by_hand():
    # coeff 0.5, chunks of 3 one-dimensional actions, one chunk per step; w = 1, e^-0.5, e^-1 oldest first.
    ensembler = TemporalEnsembler(coeff=0.5, chunk_size=3)
    chunks = [np.array([[1.0], [2.0], [3.0]]) * 10**k for k in range(4)]
    got = [float(ensembler.update(c)[0]) for c in chunks]
    # step 0: 1 (one prediction)
    # step 1: (2 * 1 + 10 * e^-0.5) / (1 + e^-0.5) = 5.020325
    # step 2: (3 + 20 e^-0.5 + 100 e^-1) / (1 + e^-0.5 + e^-1) = 26.295731
    # step 3: the oldest chunk has left the window: (30 + 200 e^-0.5 + 1000 e^-1) / (same sum) = 262.957312
    np.testing.assert_allclose(got, [1.0, 5.020325, 26.295731, 262.957312], rtol=1e-6)
    ensembler.reset()
    assert float(ensembler.update(chunks[2])[0]) == 100.0


def test_temporal_ensemble_matches_lerobots_act_ensembler():
    from lerobot.policies.act.modeling_act import ACTTemporalEnsembler

    ours, theirs = TemporalEnsembler(0.01, 5), ACTTemporalEnsembler(0.01, 5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(9):
        chunk = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(ours.update(chunk), theirs.update(chunk.clone()))


def test_rtc_prefix_weights_and_guidance_weight_by_hand():
    # d = 2 frozen, overlap H - s = 6, H = 8: c_i = (6 - i) / 5, w_i = c_i (e^c_i - 1) / (e - 1) for i = 2..5.
    expected = [1.0, 1.0, 0.570589, 0.287072, 0.114492, 0.025770, 0.0, 0.0]
    np.testing.assert_allclose(prefix_weights(2, 6, 8).numpy(), expected, atol=1e-6)
    # tau = 1 - t = 0.5: (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2 = 1 * 0.5 / 0.25 = 2; capped at beta.
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0) and guidance_weight(0.9, 5.0) == 5.0
    assert guidance_weight(1.0, 5.0) == 5.0  # pure noise: the formula diverges, the cap applies


def _gaussian_velocity(covariance: torch.Tensor, num_steps: int):
    """The exact flow velocity E[noise - A | x_t] when each action dimension's chunk A ~ N(0, covariance) over
    time: x_t = t * noise + (1 - t) * A, so E[A | x] = a C (a^2 C + t^2 I)^-1 x with a = 1 - t."""
    eye = torch.eye(covariance.shape[0], dtype=covariance.dtype)

    def velocity(x: torch.Tensor, step: int) -> torch.Tensor:
        t = 1.0 - step / num_steps
        a = 1.0 - t
        gain = a * covariance @ torch.linalg.inv(a**2 * covariance + t**2 * eye)  # [H, H]
        clean = torch.einsum("ij,bja->bia", gain, x)
        return (x - a * clean) / t - clean
    return velocity


def test_rtc_guided_sampling_keeps_the_frozen_prefix_and_joins_smoothly():
    H, A, steps, d, s = 8, 2, 10, 2, 4
    # Smooth chunks: one random level per chunk (variance 1) plus a little independent jitter (0.01).
    velocity = _gaussian_velocity(torch.ones(H, H) + 0.01 * torch.eye(H), steps)
    previous = torch.linspace(1.0, 2.0, H)[None, :, None].expand(1, H, A)  # a smooth ramp being executed
    remaining = previous[:, s:]  # H - s = 4 actions not yet executed; the first d are committed
    target = torch.zeros(1, H, A)
    target[:, : H - s] = remaining
    noise = torch.randn(1, H, A, generator=torch.Generator().manual_seed(3))
    guided = rtc_sample(velocity, noise, target, prefix_weights(d, H - s, H), steps)
    naive = rtc_sample(velocity, noise, target, torch.zeros(H), steps)  # zero weights: plain sampling
    # The frozen prefix follows the committed actions (1.571, 1.714) to ~0.15 (soft guidance, beta = 5, 10
    # steps); the same noise sampled plainly lands ~2 away (this seed: 0.148 vs 2.10).
    assert (guided[0, :d] - remaining[0, :d]).abs().max() < 0.25
    assert (naive[0, :d] - remaining[0, :d]).abs().max() > 2.0
    # Switching at index d: the jump from the last committed action to the new chunk's first own action
    # (this seed: 0.116 guided vs 2.12 naive).
    jump_guided = (guided[0, d] - remaining[0, d - 1]).abs().max()
    jump_naive = (naive[0, d] - remaining[0, d - 1]).abs().max()
    assert jump_guided < 0.25 and jump_naive > 2.0


def test_async_queue_never_starves_once_running_at_the_threshold_for_its_delay():
    # Chunks of 8 actions, a policy whose chunk arrives 3 control steps after its observation.
    predict = lambda t: np.arange(t, t + 8, dtype=np.float64)[:, None]  # action for step k has value k
    queue = AsyncChunkQueue(actions_per_chunk=8, chunk_size_threshold=threshold_for_delay(3, 8),
                            aggregate="latest_only")
    executed = run_with_delay(queue, predict, delay=3, steps=200)
    assert queue.starved_steps == 3 and executed[:3] == [None] * 3  # only the start-up wait
    assert [float(a[0]) for a in executed[3:]] == list(range(3, 200))  # every later step has its own action
    # One step less of margin starves every cycle.
    short = AsyncChunkQueue(actions_per_chunk=8, chunk_size_threshold=2 / 8, aggregate="latest_only")
    run_with_delay(short, predict, delay=3, steps=200)
    assert short.starved_steps > 20


def test_async_queue_aggregates_overlapping_steps_like_lerobot():
    queue = AsyncChunkQueue(actions_per_chunk=4, chunk_size_threshold=1.0, aggregate="weighted_average")
    queue.receive(np.array([[0.0], [10.0], [20.0], [30.0]]), observation_timestep=0)
    assert float(queue.pop()[0]) == 0.0 and float(queue.pop()[0]) == 10.0
    # Predicted from the observation of step 1 (arrived after step 1 ran): step 1 is dropped, 2 and 3 blend
    # 0.3 old + 0.7 new, 4 is new.
    queue.receive(np.array([[100.0], [200.0], [300.0], [400.0]]), observation_timestep=1)
    assert [float(queue.pop()[0]) for _ in range(3)] == pytest.approx([0.3 * 20 + 0.7 * 200, 0.3 * 30 + 0.7 * 300,
                                                                       400.0])
    assert queue.pop() is None and queue.starved_steps == 1


# --- the real policy: execution modes through select_action ---------------------------------------------------

def test_policy_temporal_ensemble_averages_its_own_chunks(tiny_backbone):
    policy = tiny_vla_policy(tiny_backbone, flow_steps=3, head="l1_chunk", execution_mode="temporal_ensemble",
                             temporal_ensemble_coeff=0.5)
    chunks = [policy.predict_action_chunk(front_camera_observation(k))[0] for k in range(3)]
    policy.reset()
    actions = [policy.select_action(front_camera_observation(k))[0] for k in range(3)]
    w = np.exp(-0.5 * np.arange(3))
    torch.testing.assert_close(actions[0], chunks[0][0])
    torch.testing.assert_close(actions[2], (w[0] * chunks[0][2] + w[1] * chunks[1][1] + w[2] * chunks[2][0]) / w.sum(),
                               atol=1e-5, rtol=1e-5)


def test_policy_rtc_commits_the_previous_chunks_actions_and_rejects_other_heads(tiny_backbone):
    d, s = 1, 3
    policy = tiny_vla_policy(tiny_backbone, flow_steps=3, head="flow", execution_mode="rtc", inference_delay_steps=d)
    noise = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(1))
    first = policy.predict_action_chunk(front_camera_observation(0), noise=noise)[0]
    executed = [policy.select_action(front_camera_observation(k), noise=noise)[0] for k in range(2 * s)]
    torch.testing.assert_close(torch.stack(executed[:s]), first[:s])  # open loop through the first chunk
    torch.testing.assert_close(executed[s], first[s])  # committed during the (simulated) inference delay
    assert torch.isfinite(torch.stack(executed)).all()
    with pytest.raises(ValueError, match="execution_mode=rtc needs head=flow"):
        tiny_vla_policy(tiny_backbone, flow_steps=3, head="l1_chunk", execution_mode="rtc")
    with pytest.raises(ValueError, match="inference_delay_steps \\(4\\) <= n_action_steps"):
        tiny_vla_policy(tiny_backbone, flow_steps=3, head="flow", execution_mode="rtc", inference_delay_steps=4)


def test_rtc_executor_replans_every_horizon_with_the_remaining_actions_as_target():
    seen = []

    def sample(target, weights):
        seen.append(None if target is None else (target.clone(), weights.clone()))
        return torch.arange(6.0)[None, :, None] + 10 * len(seen)  # chunk k: 10k, 10k + 1, ...

    executor = RTCExecutor(chunk_size=6, execution_horizon=3, delay=1)
    actions = [float(executor.next_action(sample)[0, 0]) for _ in range(7)]
    # chunk 1 runs 10, 11, 12; then chunk 2 is sampled towards chunk 1's remaining [13, 14, 15, 0, 0, 0],
    # its first action is the committed 13, then 21, 22; then chunk 3 from chunk 2's remaining.
    assert actions == [10.0, 11.0, 12.0, 13.0, 21.0, 22.0, 23.0]
    target, weights = seen[1]
    assert target[0, :, 0].tolist() == [13.0, 14.0, 15.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(weights.numpy(), prefix_weights(1, 3, 6).numpy())


def test_async_queue_hands_its_queued_actions_in_step_order():
    queue = AsyncChunkQueue(actions_per_chunk=4, chunk_size_threshold=0.5)
    assert queue.queued() is None
    queue.receive(np.array([[0.0], [1.0], [2.0], [3.0]]), observation_timestep=0)
    queue.pop()
    assert queue.queued()[:, 0].tolist() == [1.0, 2.0, 3.0]  # what a robot sends as `action_prefix`
