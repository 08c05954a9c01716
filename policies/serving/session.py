"""One robot connection's state: its own action queue and safety filter, never shared with another client."""

from __future__ import annotations

from collections import deque

import numpy as np

from policies.execution.temporal_ensemble import TemporalEnsembler
from policies.safety import ActionLimits, SafetyFilter, SafetyReport


class NonFiniteChunkError(RuntimeError):
    """The policy produced NaN or infinite actions: the request gets an error, nothing is served."""


class PolicySession:
    """Serves `actions_per_reply` actions per request from a queue refilled with the first `n_action_steps`
    actions of a freshly predicted chunk whenever it runs short (LeRobot's `select_action` semantics, kept
    per connection so concurrent robots never see each other's queue). With an `ensembler` (temporal
    ensembling) every request predicts a chunk and gets the one ensembled action for its step."""

    def __init__(self, limits: ActionLimits, n_action_steps: int, actions_per_reply: int,
                 ensembler: TemporalEnsembler | None = None) -> None:
        if not 1 <= actions_per_reply <= n_action_steps:
            raise ValueError(f"actions_per_reply={actions_per_reply} must lie in [1, n_action_steps={n_action_steps}]")
        if ensembler is not None and actions_per_reply != 1:
            raise ValueError(f"temporal ensembling serves one action per request, not actions_per_reply={actions_per_reply}")
        self.ensembler = ensembler
        self.n_action_steps = n_action_steps
        self.actions_per_reply = actions_per_reply
        self.safety = SafetyFilter(limits)
        self._queue: deque[np.ndarray] = deque()
        self.requests = 0
        self.nonfinite_chunks = 0

    def reset(self) -> None:
        """Start a new episode: drop queued actions and the rate limiter's previous action."""
        self._queue.clear()
        self.safety.reset()
        if self.ensembler is not None:
            self.ensembler.reset()

    def needs_chunk(self) -> bool:
        """Whether the next reply needs a new chunk from the policy."""
        return self.ensembler is not None or len(self._queue) < self.actions_per_reply

    def push_chunk(self, chunk: np.ndarray) -> None:
        """Replace the queue with the first `n_action_steps` actions of a predicted `[H, D]` chunk."""
        if chunk.ndim != 2 or chunk.shape[0] < self.actions_per_reply:
            raise ValueError(f"the policy returned a chunk of shape {list(chunk.shape)}, expected "
                             f"[>={self.actions_per_reply}, {self.safety.limits.action_dim}]")
        self._queue.clear()
        executed = np.asarray(chunk[: self.n_action_steps], dtype=np.float32)
        bad = ~np.isfinite(executed)
        if bad.any():
            # Never a silent hold of the previous action: for a delta-action arm that keeps it moving.
            self.nonfinite_chunks += 1
            raise NonFiniteChunkError(f"the policy produced {int(bad.sum())} non-finite action values (of "
                                      f"{executed.size}) for this observation; no action is served (check the "
                                      "observation against the training data)")
        if self.ensembler is not None:
            executed = np.asarray(self.ensembler.update(np.asarray(chunk, np.float64)), np.float32)[None]
        self._queue.extend(executed)

    def take(self) -> tuple[np.ndarray, SafetyReport]:
        """Pop the next `actions_per_reply` actions, made safe: `([k, D] float32, report)`."""
        raw = np.stack([self._queue.popleft() for _ in range(self.actions_per_reply)])
        self.requests += 1
        return self.safety.apply(raw)
