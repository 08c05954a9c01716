"""A websocket policy server speaking openpi's protocol, so robots using `openpi-client` can call our policy.

On connect the server sends the metadata map (msgpack-numpy); each binary frame the client sends is one
observation and gets one reply `{"actions": float32 [k, action_dim], "server_timing": {...}, "safety": {...}}`.
A request the server refuses gets a text frame `error: ...` naming the problem (openpi's client raises it as
a RuntimeError) and the connection stays open. Requests from all connections are batched into one policy
call when they arrive together; each connection keeps its own action queue and safety state.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import websockets
import websockets.asyncio.server as ws_server

from policies import msgpack_numpy
from policies.safety import ActionLimits
from policies.serving.protocol import (
    Observation,
    ObservationSpec,
    ProtocolError,
    to_batch,
    validate_observation,
)
from policies.serving.session import PolicySession

log = logging.getLogger(__name__)


class ChunkPolicy(Protocol):
    """What the server needs from a policy: raw LeRobot batch in, unnormalised `[B, H, D]` chunk out."""

    def predict_action_chunk(self, batch: dict[str, Any]) -> torch.Tensor: ...


@dataclass
class ServerConfig:
    """Network, auth and batching settings (`configs/serve.yaml` -> `server:`)."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: a robot policy is not a public service
    port: int = 8000  # 0 picks a free port
    api_key: str | None = None  # shared token; clients send `Authorization: Api-Key <token>`
    max_message_bytes: int = 8 << 20  # larger requests get an error reply, the connection stays open
    hard_max_message_bytes: int = 64 << 20  # larger frames close the connection (1009) before buffering
    max_batch: int = 8
    actions_per_reply: int | None = None  # None: the whole n_action_steps chunk per reply (openpi style)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.hard_max_message_bytes < self.max_message_bytes:
            raise ValueError(f"server.hard_max_message_bytes={self.hard_max_message_bytes} is below "
                             f"server.max_message_bytes={self.max_message_bytes}")
        if self.max_batch < 1:
            raise ValueError(f"server.max_batch={self.max_batch} must be >= 1")


class ChunkBatcher:
    """Collects concurrent requests and runs them as one batch on a single inference thread."""

    def __init__(self, policy: ChunkPolicy, spec: ObservationSpec, max_batch: int, device: str) -> None:
        self.policy, self.spec, self.max_batch, self.device = policy, spec, max_batch, device
        self._queue: asyncio.Queue[tuple[Observation, asyncio.Future]] = asyncio.Queue()
        # One thread: the policy object is called by one caller at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self.batches = 0
        self.batched_requests = 0

    async def predict(self, observation: Observation) -> tuple[np.ndarray, int]:
        """The `[H, D]` chunk the policy predicts for one observation, and the size of the batch it ran in."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((observation, future))
        return await future

    def _run(self, observations: list[Observation]) -> np.ndarray:
        batch = to_batch(observations, self.spec, self.device)
        with torch.inference_mode():
            chunk = self.policy.predict_action_chunk(batch)
        chunk = chunk.detach().float().cpu().numpy()
        return chunk[:, None, :] if chunk.ndim == 2 else chunk  # one-step heads return [B, D]

    async def _answer(self, items: list[tuple[Observation, asyncio.Future]]) -> None:
        """One policy call for `items`; on failure each request is retried alone, so one bad request only
        fails itself and not the other clients batched with it."""
        loop = asyncio.get_running_loop()
        try:
            chunks = await loop.run_in_executor(self._executor, self._run, [obs for obs, _ in items])
        except Exception as exc:
            if len(items) > 1:
                log.warning("policy call failed for a batch of %d; retrying one by one", len(items))
                for item in items:
                    await self._answer([item])
                return
            log.exception("policy call failed")
            if not items[0][1].done():
                items[0][1].set_exception(RuntimeError(f"policy failed: {type(exc).__name__}: {exc}"))
            return
        self.batches += 1
        self.batched_requests += len(items)
        for (_, future), chunk in zip(items, chunks, strict=True):
            if not future.done():  # its client may have gone away
                future.set_result((chunk, len(items)))

    async def run_forever(self) -> None:
        """Take whatever requests are waiting (up to `max_batch`) and answer them with one policy call."""
        while True:
            items = [await self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            await self._answer(items)

    def close(self) -> None:
        """Stop the inference thread (after the current batch)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServerStats:
    """Counters over the server's life (reported by the bench and the logs)."""

    connections: int = 0
    requests: int = 0
    errors: int = 0
    rejected_auth: int = 0


class PolicyServer:
    """Serves `policy` over websockets with openpi's protocol; one `PolicySession` per connection."""

    def __init__(self, policy: ChunkPolicy, spec: ObservationSpec, limits: ActionLimits, n_action_steps: int,
                 config: ServerConfig | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        self.policy, self.spec, self.limits = policy, spec, limits
        self.config = config or ServerConfig()
        self.n_action_steps = int(n_action_steps)
        self.actions_per_reply = int(self.config.actions_per_reply or self.n_action_steps)
        PolicySession(limits, self.n_action_steps, self.actions_per_reply)  # fail now on a bad setting
        self.metadata = {**(metadata or {}), **self._protocol_metadata()}
        self.stats = ServerStats()
        self.port: int | None = None
        self._batcher: ChunkBatcher | None = None

    def _protocol_metadata(self) -> dict[str, Any]:
        return {"protocol": "openpi-websocket-msgpack-numpy", "observation": self.spec.to_dict(),
                "action_dim": self.limits.action_dim, "n_action_steps": self.n_action_steps,
                "actions_per_reply": self.actions_per_reply, "action_limits": self.limits.to_dict(),
                "max_message_bytes": self.config.max_message_bytes, "auth": self.config.api_key is not None}

    def _process_request(self, connection: ws_server.ServerConnection, request: ws_server.Request):
        """Health check and shared-token authentication, before the websocket handshake."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key is None:
            return None
        sent = request.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Api-Key {key}".encode()):
            return None
        self.stats.rejected_auth += 1
        log.warning("rejected a connection from %s: missing or wrong API key", connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")

    async def _answer(self, session: PolicySession, message: str | bytes) -> dict[str, Any]:
        """Validate one request and produce its reply map; raises `ProtocolError` for a refused request."""
        if isinstance(message, str):
            raise ProtocolError("expected a binary msgpack frame, got a text frame")
        if len(message) > self.config.max_message_bytes:
            raise ProtocolError(f"message of {len(message)} bytes is over the limit of "
                                f"{self.config.max_message_bytes} bytes")
        try:
            decoded = msgpack_numpy.unpackb(message)
        except msgpack_numpy.DecodeError as exc:
            raise ProtocolError(str(exc)) from exc
        observation = validate_observation(decoded, self.spec)
        if observation.reset:
            session.reset()
        batch_size = 0  # 0: served from this connection's queue, no policy call
        if session.needs_chunk():
            chunk, batch_size = await self._batcher.predict(observation)
            session.push_chunk(chunk)
        actions, report = session.take()
        return {"actions": actions, "safety": report.to_dict(), "predicted": batch_size > 0,
                "batch_size": batch_size}

    async def _handler(self, websocket: ws_server.ServerConnection) -> None:
        self.stats.connections += 1
        session = PolicySession(self.limits, self.n_action_steps, self.actions_per_reply)
        peer = websocket.remote_address
        log.info("connection from %s opened", peer)
        try:
            await websocket.send(msgpack_numpy.packb(self.metadata))
            prev_total_ms = None
            async for message in websocket:
                start = time.monotonic()
                self.stats.requests += 1
                try:
                    reply = await self._answer(session, message)
                except (ProtocolError, RuntimeError, ValueError) as exc:
                    self.stats.errors += 1
                    log.info("refused a request from %s: %s", peer, exc)
                    await websocket.send(f"error: {exc}")
                    continue
                reply["server_timing"] = {"infer_ms": (time.monotonic() - start) * 1000}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await websocket.send(msgpack_numpy.packb(reply))
                prev_total_ms = (time.monotonic() - start) * 1000
        except websockets.ConnectionClosed:
            pass  # the client went away, maybe mid-request: its session dies with it
        finally:
            log.info("connection from %s closed after %d requests", peer, session.requests)

    async def run(self, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (forever when None); sets `self.port` and `ready` once listening."""
        self._batcher = ChunkBatcher(self.policy, self.spec, self.config.max_batch, self.config.device)
        worker = asyncio.create_task(self._batcher.run_forever())
        try:
            async with ws_server.serve(self._handler, self.config.host, self.config.port, compression=None,
                                       max_size=self.config.hard_max_message_bytes,
                                       process_request=self._process_request) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving on ws://%s:%d (auth %s)", self.config.host, self.port,
                         "on" if self.config.api_key else "off")
                if ready is not None:
                    ready.set()
                await (stop.wait() if stop is not None else server.serve_forever())
        finally:
            worker.cancel()
            self._batcher.close()

    def serve_forever(self) -> None:
        """Block serving (the `vst-vla serve` command)."""
        asyncio.run(self.run())


class ServerThread:
    """Runs a `PolicyServer` on a background thread (tests, the load bench): `with ServerThread(s) as port:`."""

    def __init__(self, server: PolicyServer, timeout_s: float = 30.0) -> None:
        self.server, self.timeout_s = server, timeout_s
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="policy-server", daemon=True)
        self._error: BaseException | None = None

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        try:
            self._loop.run_until_complete(self.server.run(self._ready, self._stop))
        except Exception as exc:  # surfaced to the caller waiting on `ready`
            log.exception("policy server stopped")
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def __enter__(self) -> int:
        self._thread.start()
        if not self._ready.wait(self.timeout_s) or self._error is not None:
            raise RuntimeError(f"policy server did not start: {self._error!r}")
        return self.server.port

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout_s)
