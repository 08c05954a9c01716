"""The robot side of asynchronous inference: keep executing queued actions, ask for the next chunk early.

LeRobot's async inference semantics (`async_inference/robot_client.py`): every action carries the control
timestep it is for; the client sends an observation when `len(queue) / actions_per_chunk <=
chunk_size_threshold`; a chunk computed from the observation of step t holds actions for steps t, t+1, ...;
actions for steps already executed are dropped, and a step that has both a queued and a new action gets
`aggregate(old, new)`. Only numpy: this module runs in the robot's own venv (openpi-client, numpy < 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# LeRobot's registry (`async_inference/configs.py`), same names and weights.
AGGREGATE_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "weighted_average": lambda old, new: 0.3 * old + 0.7 * new,
    "latest_only": lambda old, new: new,
    "average": lambda old, new: 0.5 * old + 0.5 * new,
    "conservative": lambda old, new: 0.7 * old + 0.3 * new,
}


def delay_steps(latency_s: float, fps: float) -> int:
    """Control steps that pass while a request of `latency_s` seconds is in flight (rounded up)."""
    return max(0, math.ceil(latency_s * fps - 1e-9))


def threshold_for_delay(delay: int, actions_per_chunk: int) -> float:
    """The smallest `chunk_size_threshold` that never starves with `delay` steps of latency: the request
    must leave when `delay` actions are still queued (they run while the chunk is computed)."""
    if delay >= actions_per_chunk:
        raise ValueError(f"a delay of {delay} steps needs chunks longer than actions_per_chunk={actions_per_chunk}")
    return delay / actions_per_chunk


class AsyncChunkQueue:
    """Timestep-indexed action queue for one robot; one request in flight at a time."""

    def __init__(self, actions_per_chunk: int, chunk_size_threshold: float = 0.5,
                 aggregate: str = "weighted_average") -> None:
        if actions_per_chunk < 1:
            raise ValueError(f"actions_per_chunk must be >= 1, got {actions_per_chunk}")
        if not 0.0 <= chunk_size_threshold <= 1.0:
            raise ValueError(f"chunk_size_threshold must lie in [0, 1], got {chunk_size_threshold}")
        if aggregate not in AGGREGATE_FUNCTIONS:
            raise ValueError(f"unknown aggregate function {aggregate!r}; known: {sorted(AGGREGATE_FUNCTIONS)}")
        self.actions_per_chunk, self.threshold = actions_per_chunk, chunk_size_threshold
        self.aggregate = AGGREGATE_FUNCTIONS[aggregate]
        self.reset()

    def reset(self) -> None:
        """A new episode: empty queue, timestep 0."""
        self.timestep = 0  # the control step the next `pop` executes
        self._actions: dict[int, np.ndarray] = {}
        self.in_flight = False
        self.starved_steps = 0

    def __len__(self) -> int:
        return len(self._actions)

    def queued(self) -> np.ndarray | None:
        """The queued actions from this step on, in order (what real-time chunking sends as `action_prefix`)."""
        steps = sorted(step for step in self._actions if step >= self.timestep)
        return np.stack([self._actions[step] for step in steps]) if steps else None

    def ready_to_request(self) -> bool:
        """Whether to send the current observation now (the queue ran down to the threshold)."""
        return not self.in_flight and len(self) / self.actions_per_chunk <= self.threshold

    def mark_requested(self) -> int:
        """Record that the observation of this step was sent; returns its timestep (send it with the request)."""
        self.in_flight = True
        return self.timestep

    def receive(self, chunk: np.ndarray, observation_timestep: int) -> None:
        """Merge a chunk predicted from the observation of `observation_timestep` into the queue."""
        self.in_flight = False
        for i, action in enumerate(np.asarray(chunk)[: self.actions_per_chunk]):
            step = observation_timestep + i
            if step < self.timestep:
                continue  # executed while the chunk was being computed
            old = self._actions.get(step)
            self._actions[step] = action if old is None else self.aggregate(old, action)

    def pop(self) -> np.ndarray | None:
        """The action for this control step (None: the queue starved), and advance one step."""
        action = self._actions.pop(self.timestep, None)
        if action is None:
            self.starved_steps += 1
        self.timestep += 1
        return action


def run_with_delay(queue: AsyncChunkQueue, predict: Callable[[int], np.ndarray], delay: int,
                   steps: int) -> list[np.ndarray | None]:
    """Drive `queue` for `steps` control steps with a policy whose chunk for the observation of step t
    (`predict(t)`) arrives `delay` steps later: the step-counted model of a robot with that latency."""
    pending: dict[int, tuple[int, np.ndarray]] = {}  # arrival step -> (observation step, chunk)
    executed = []
    for step in range(steps):
        if step in pending:
            queue.receive(pending[step][1], pending.pop(step)[0])
        if queue.ready_to_request():
            observed = queue.mark_requested()
            if delay == 0:
                queue.receive(predict(observed), observed)
            else:
                pending[step + delay] = (observed, predict(observed))
        executed.append(queue.pop())
    return executed
