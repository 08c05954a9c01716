"""Batched inference off the event loop: requests from all connections share policy calls on one worker thread.

The policy runs in a single worker thread (the policy object is called by one caller at a time), so the
event loop keeps reading, validating and answering other connections while a chunk is computed. Every
request carries a deadline: a request whose chunk is not ready in time gets an error of its own, and a
request whose deadline passed while it waited in the queue is dropped without running the policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch

from policies.serving.protocol import Observation, ObservationSpec, bounded, to_batch

log = logging.getLogger(__name__)


class ChunkPolicy(Protocol):
    """What the server needs from a policy: raw LeRobot batch in, unnormalised `[B, H, D]` chunk out."""

    def predict_action_chunk(self, batch: dict[str, Any]) -> torch.Tensor: ...


def rtc_guidance(observations: list[Observation], chunk_size: int) -> dict[str, torch.Tensor]:
    """Real-time chunking target and per-row weights for a batch: each row's queued actions (zero-padded) with
    the paper's mask (1 on its d committed actions, decaying over the rest of its queue); rows without a
    prefix get zero weights, i.e. plain sampling. Empty when no request carries a prefix."""
    from policies.execution.rtc import prefix_weights

    if all(o.prefix is None for o in observations):
        return {}
    action_dim = next(o.prefix for o in observations if o.prefix is not None).shape[1]
    target = torch.zeros(len(observations), chunk_size, action_dim)
    weights = torch.zeros(len(observations), chunk_size)
    for row, obs in enumerate(observations):
        if obs.prefix is not None:
            target[row, : len(obs.prefix)] = torch.from_numpy(obs.prefix)
            weights[row] = prefix_weights(obs.delay, len(obs.prefix), chunk_size)
    return {"rtc_target": target, "rtc_weights": weights}


class InferenceTimeout(RuntimeError):
    """A request whose chunk was not ready before its deadline (`server.request_timeout_s`)."""


class ChunkBatcher:
    """Collects concurrent requests and runs them as one batch on a single inference thread."""

    def __init__(self, policy: ChunkPolicy, spec: ObservationSpec, max_batch: int, device: str,
                 timeout_s: float | None = None, rtc_chunk_size: int | None = None) -> None:
        self.policy, self.spec, self.max_batch, self.device = policy, spec, max_batch, device
        self.timeout_s = timeout_s
        self.chunk_size = rtc_chunk_size  # set: requests may carry an action prefix (real-time chunking)
        self._queue: asyncio.Queue[tuple[Observation, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self.batches = 0
        self.batched_requests = 0
        self.timeouts = 0
        self.busy_since: float | None = None  # monotonic start of the policy call in progress

    def stalled_for(self) -> float:
        """Seconds the policy call in progress has been running (0 when idle): the readiness signal."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    async def predict(self, observation: Observation) -> tuple[np.ndarray, int]:
        """The `[H, D]` chunk the policy predicts for one observation, and the size of the batch it ran in;
        raises `InferenceTimeout` when it is not ready within `timeout_s`."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((observation, future))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            self.timeouts += 1
            raise InferenceTimeout(f"inference did not finish within {self.timeout_s:g} s "
                                   "(server.request_timeout_s); this request was dropped") from None

    def _run(self, observations: list[Observation]) -> np.ndarray:
        self.busy_since = time.monotonic()
        try:
            batch = to_batch(observations, self.spec, self.device)
            with torch.inference_mode():
                guidance = rtc_guidance(observations, self.chunk_size) if self.chunk_size else {}
                chunk = self.policy.predict_action_chunk(batch, **guidance)
            chunk = chunk.detach().float().cpu().numpy()
        finally:
            self.busy_since = None
        return chunk[:, None, :] if chunk.ndim == 2 else chunk  # one-step heads return [B, D]

    async def _answer(self, items: list[tuple[Observation, asyncio.Future]]) -> None:
        """One policy call for `items`; on failure each request is retried alone, so one bad request only
        fails itself and not the other clients batched with it."""
        loop = asyncio.get_running_loop()
        try:
            chunks = await loop.run_in_executor(self._executor, self._run, [obs for obs, _ in items])
        except Exception as exc:  # noqa: BLE001 - any policy failure fails only its own requests
            if len(items) > 1:
                log.warning("policy call failed for a batch of %d; retrying one by one", len(items))
                for item in items:
                    await self._answer([item])
                return
            log.error("policy call failed: %s", bounded(f"{type(exc).__name__}: {exc}"))
            if not items[0][1].done():
                items[0][1].set_exception(RuntimeError(f"policy failed: {type(exc).__name__}: {exc}"))
            return
        self.batches += 1
        self.batched_requests += len(items)
        for (_, future), chunk in zip(items, chunks, strict=True):
            if not future.done():  # its client may have gone away, or its deadline passed
                future.set_result((chunk, len(items)))

    async def run_forever(self) -> None:
        """Take whatever live requests are waiting (up to `max_batch`) and answer them with one policy call."""
        while True:
            items = [await self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            live = [item for item in items if not item[1].done()]  # timed out or disconnected while queued
            if live:
                await self._answer(live)

    def close(self) -> None:
        """Stop the inference thread (after the current batch)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
