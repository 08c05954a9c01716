"""Simulated inference latency: a chunk policy whose output arrives `delay` control steps after the
observation it saw, while the env keeps stepping the actions already committed (`vst-vla eval-sim
inference_delay_steps=d`).

`DelayedChunkPolicy` wraps any policy with LeRobot's chunk interface (`reset()`,
`predict_action_chunk(batch, **kwargs) -> [B, chunk_size, action_dim]` in environment units) and gives it
the rollout's `select_action` interface, so `sim` stays policy-agnostic. A chunk requested with the
observation of step t holds actions for steps t, t+1, ... and reaches the robot at step t + d. How chunks are
requested and executed is the execution mode (`policy.config.execution_mode`; LeRobot's ACT has
`temporal_ensemble_coeff` instead):

- `open_loop` (synchronous chunks): request when the queue is empty; the arm holds its pose while the
  chunk is computed, then runs its first `n_action_steps` actions from index 0 (the RTC paper's synchronous
  baseline: the robot pauses during inference; every chunk costs d idle steps).
- `temporal_ensemble` (ACT): request every step; the action of step k averages every prediction for k that
  has arrived, i.e. from the chunks of observations j <= k - d with k - j < chunk_size, weighted
  exp(-coeff * i) with i = 0 the oldest (ACT's and LeRobot's `ACTTemporalEnsembler` weights).
- `rtc` (real-time chunking, arXiv 2506.07339): request every `n_action_steps` = s steps with LeRobot's RTC
  kwargs `inference_delay=d` and `prev_chunk_left_over` (the queued actions from this step on, environment
  units); the first d actions of the chunk's window are committed (executed from the previous chunk while it
  is computed), the new chunk takes over from step t + d. Needs d <= s <= chunk_size - d.

Episode start: the first chunk is awaited before the env steps (a robot starts once its policy answered),
so every mode starts from the same first chunk. A step with no action (only `open_loop` with d > 0 while its
chunk is in flight) is a hold: `hold_action(last executed action)`, by default MetaWorld's pose hold (zero
end-effector translation, the last gripper command: the xyz action is a change of the mocap target, the
gripper action an absolute effort, so "no new command" means exactly this).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

EXECUTION_MODES = ("open_loop", "temporal_ensemble", "rtc")


def hold_pose_action(last: Tensor) -> Tensor:
    """MetaWorld's "no new command" [B, 4]: no end-effector translation, the last gripper effort kept."""
    held = torch.zeros_like(last)
    held[..., -1] = last[..., -1]
    return held


def chunk_settings(policy: Any) -> dict[str, Any]:
    """The execution settings a policy's config declares (VST-VLA's `execution_mode`; ACT's
    `temporal_ensemble_coeff`; else synchronous chunks): mode, chunk_size, n_action_steps, coeff."""
    config = getattr(policy, "config", None)
    if config is None or not hasattr(config, "chunk_size"):
        raise ValueError(f"inference_delay_steps needs a chunk policy (a `config` with chunk_size and a "
                         f"`predict_action_chunk`, LeRobot's interface); {type(policy).__name__} has none: "
                         "drop inference_delay_steps for this policy")
    coeff = getattr(config, "temporal_ensemble_coeff", None)
    mode = getattr(config, "execution_mode", None) or ("temporal_ensemble" if coeff is not None else "open_loop")
    return {"mode": str(mode), "chunk_size": int(config.chunk_size), "n_action_steps": int(config.n_action_steps),
            "temporal_ensemble_coeff": float(coeff if coeff is not None else 0.0)}


class DelayedChunkPolicy:
    """`select_action` of `policy` under `delay` steps of inference latency (see the module doc)."""

    def __init__(self, policy: Any, delay: int, mode: str | None = None,
                 hold_action: Callable[[Tensor], Tensor] = hold_pose_action) -> None:
        if not hasattr(policy, "predict_action_chunk"):
            raise ValueError(f"inference_delay_steps needs a policy with predict_action_chunk (LeRobot's chunk "
                             f"interface); {type(policy).__name__} has none")
        settings = chunk_settings(policy)
        self.policy, self.delay, self.hold_action = policy, int(delay), hold_action
        self.mode = mode or settings["mode"]
        self.chunk_size, self.n_action_steps = settings["chunk_size"], settings["n_action_steps"]
        self.coeff = settings["temporal_ensemble_coeff"]
        self._check()
        self.reset()

    def _check(self) -> None:
        d, s, h = self.delay, self.n_action_steps, self.chunk_size
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode {self.mode!r} is not one of {EXECUTION_MODES}")
        if d < 0:
            raise ValueError(f"inference_delay_steps must be >= 0, got {d}")
        if self.mode == "rtc" and not d <= s <= h - d:
            raise ValueError(f"execution_mode=rtc under inference_delay_steps={d} needs inference_delay_steps <= "
                             f"n_action_steps ({s}) <= chunk_size ({h}) - inference_delay_steps")
        if self.mode == "temporal_ensemble" and d >= h:
            raise ValueError(f"temporal_ensemble under inference_delay_steps={d} needs chunks longer than the delay "
                             f"(chunk_size={h}): no prediction would reach the step it is for")

    @property
    def config(self) -> Any:
        return self.policy.config

    def reset(self) -> None:
        """A new episode: forget every chunk, queued action and request in flight."""
        self.policy.reset()
        self.step = 0  # the control step the next select_action is for
        self._planned: dict[int, list[Tensor]] = {}  # step -> its predictions, oldest first
        self._in_flight: list[tuple[int, int, Tensor]] = []  # (arrival step, observation step, chunk)
        self._last: Tensor | None = None
        self.held_steps = 0

    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """The action [B, action_dim] the robot executes at this control step."""
        t = self.step
        self._deliver(t)  # a chunk arriving now is in hand before this step's observation is sent
        if self.mode == "open_loop":
            if not self._planned and not self._in_flight:
                self._request(batch, t, arrival=t + self.delay if t > 0 else t)
        elif self.mode == "temporal_ensemble" or t % self.n_action_steps == 0:
            self._request(batch, t, arrival=t + self.delay if t > 0 else t)
        self._deliver(t)  # d = 0, or the awaited first chunk
        predictions = self._planned.pop(t, None)
        if predictions is None:
            if self._last is None:
                raise RuntimeError("no action for the first step: the first chunk is always awaited")
            action = self.hold_action(self._last)
            self.held_steps += 1
        else:
            weights = np.exp(-self.coeff * np.arange(len(predictions)))
            weights = weights / weights.sum()
            action = sum(float(w) * p for w, p in zip(weights, predictions, strict=True))
        self._last = action
        self.step += 1
        return action

    def _request(self, batch: dict[str, Any], t: int, arrival: int) -> None:
        kwargs = {}
        if self.mode == "rtc" and t > 0:
            left_over = torch.stack([self._planned[k][-1] for k in sorted(self._planned) if k >= t], dim=1)
            kwargs = {"inference_delay": self.delay, "prev_chunk_left_over": left_over}
        chunk = torch.as_tensor(self.policy.predict_action_chunk(batch, **kwargs)).float()
        self._in_flight.append((arrival, t, chunk))

    def _deliver(self, t: int) -> None:
        """Merge the chunks arriving at step t: their actions for steps already executed are dropped."""
        arrived = [flight for flight in self._in_flight if flight[0] <= t]
        self._in_flight = [flight for flight in self._in_flight if flight[0] > t]
        for arrival, observed, chunk in arrived:
            if self.mode == "open_loop":  # the arm held still while waiting: run the chunk from its start
                for i in range(self.n_action_steps):
                    self._planned[t + i] = [chunk[:, i]]
                continue
            for i in range(chunk.shape[1]):
                step = observed + i
                if step < arrival:
                    continue  # committed: executed from the previous chunk while this one was computed
                if self.mode == "rtc":
                    self._planned[step] = [chunk[:, i]]  # the new chunk replaces the rest of the old one
                else:
                    self._planned.setdefault(step, []).append(chunk[:, i])

