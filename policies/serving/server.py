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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import websockets
import websockets.asyncio.server as ws_server

from policies import msgpack_numpy
from policies.execution.temporal_ensemble import TemporalEnsembler
from policies.safety import ActionLimits
from policies.serving.batcher import ChunkBatcher, ChunkPolicy, InferenceTimeout
from policies.serving.protocol import (
    ObservationSpec,
    ProtocolError,
    RequestLimits,
    bounded,
    validate_observation,
)
from policies.serving.session import NonFiniteChunkError, PolicySession

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Network, auth, batching and resource limits (`configs/serve.yaml` -> `server:`).

    Memory bound: each connection buffers at most `max_queued_frames` unread frames of at most
    `hard_max_message_bytes` each, plus the message being handled (and its decoded copy), so the server holds
    at most about `max_connections * (max_queued_frames + 2) * hard_max_message_bytes` of request data
    (8 x 3 x 16 MiB = 384 MiB with the defaults)."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: a robot policy is not a public service
    port: int = 8000  # 0 picks a free port
    api_key: str | None = None  # shared token; clients send `Authorization: Api-Key <token>`
    max_message_bytes: int = 8 << 20  # larger requests get an error reply, the connection stays open
    hard_max_message_bytes: int = 16 << 20  # larger frames close the connection (1009) before buffering
    max_connections: int = 8  # more are refused (HTTP 503 before the upgrade)
    max_queued_frames: int = 1  # unread frames buffered per connection before reading pauses (backpressure)
    max_keys: int = 16  # top-level keys in one request (checked while decoding)
    max_prompt_chars: int = 2000  # refused before tokenising
    max_prompt_tokens: int = 256  # refused before batching; never above the model's context
    request_timeout_s: float | None = 10.0  # a chunk not ready by then fails that request only
    state_range_margin: float | None = 10.0  # refuse states beyond min/max -/+ margin x range (None: off)
    max_batch: int = 8
    actions_per_reply: int | None = None  # None: the whole n_action_steps chunk per reply (openpi style)
    execution_mode: str | None = None  # None: the bundle's; open_loop | temporal_ensemble | rtc (flow)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.hard_max_message_bytes < self.max_message_bytes:
            raise ValueError(f"server.hard_max_message_bytes={self.hard_max_message_bytes} is below "
                             f"server.max_message_bytes={self.max_message_bytes}")
        for name in ("max_batch", "max_connections", "max_queued_frames", "max_keys", "max_prompt_chars",
                     "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"server.{name}={getattr(self, name)} must be >= 1")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError(f"server.request_timeout_s={self.request_timeout_s} must be > 0 (or null: no deadline)")


@dataclass
class ServerStats:
    """Counters over the server's life (reported by the bench and the logs)."""

    connections: int = 0
    requests: int = 0
    errors: int = 0
    rejected_auth: int = 0
    rejected_connections: int = 0
    nonfinite_chunks: int = 0
    timeouts: int = 0


class PolicyServer:
    """Serves `policy` over websockets with openpi's protocol; one `PolicySession` per connection.

    `prompt_tokens` counts a prompt's tokens as the policy will see them (None: only the character cap
    applies); `max_context_tokens` is the room the model leaves for the prompt (its context minus images,
    template and queries), a ceiling on `server.max_prompt_tokens`. `state_range` is the training data's
    (min, max) of the state, widened by `server.state_range_margin` into the plausible range."""

    def __init__(self, policy: ChunkPolicy, spec: ObservationSpec, limits: ActionLimits, n_action_steps: int,
                 config: ServerConfig | None = None, metadata: Mapping[str, Any] | None = None,
                 prompt_tokens: Callable[[str], int] | None = None, max_context_tokens: int | None = None,
                 state_range: tuple[np.ndarray, np.ndarray] | None = None,
                 execution: Mapping[str, Any] | None = None) -> None:
        self.policy, self.spec, self.limits = policy, spec, limits
        self.config = config or ServerConfig()
        self.n_action_steps = int(n_action_steps)
        self.execution = self._execution(execution)
        ensembling = self.execution["mode"] == "temporal_ensemble"
        self.actions_per_reply = 1 if ensembling else int(self.config.actions_per_reply or self.n_action_steps)
        self._new_session()  # fail now on a bad setting
        self.prompt_tokens = prompt_tokens
        self.max_prompt_tokens = self.config.max_prompt_tokens
        if max_context_tokens is not None and max_context_tokens < self.max_prompt_tokens:
            log.warning("server.max_prompt_tokens=%d lowered to %d: the model's context leaves no more room",
                        self.max_prompt_tokens, max_context_tokens)
            self.max_prompt_tokens = max(1, int(max_context_tokens))
        rtc = self.execution["mode"] == "rtc"
        self.rtc_chunk_size = int(self.execution.get("chunk_size", self.n_action_steps)) if rtc else None
        self.request_limits = RequestLimits(max_keys=self.config.max_keys,
                                            max_prompt_chars=self.config.max_prompt_chars,
                                            rtc_chunk=(self.rtc_chunk_size, limits.action_dim) if rtc else None,
                                            **self._state_bounds(state_range))
        self.metadata = {**(metadata or {}), **self._protocol_metadata()}
        self.stats = ServerStats()
        self.port: int | None = None
        self.active_connections = 0
        self._batcher: ChunkBatcher | None = None

    def _execution(self, execution: Mapping[str, Any] | None) -> dict[str, Any]:
        """The execution settings served to robots: the bundle's, with `server.execution_mode` applied."""
        merged = {"mode": "open_loop", "n_action_steps": self.n_action_steps, **(execution or {})}
        if self.config.execution_mode is not None:
            merged["mode"] = self.config.execution_mode
        if merged["mode"] not in ("open_loop", "temporal_ensemble", "rtc"):
            raise ValueError(f"server.execution_mode={merged['mode']!r} is not open_loop, temporal_ensemble or rtc")
        if merged["mode"] == "rtc":  # requests may carry the robot's queued actions to guide the next chunk
            merged["request_keys"] = {"action_prefix": "float32 [k, action_dim]: the queued, unexecuted actions",
                                      "inference_delay": "int d <= k: steps until this reply arrives; the "
                                                         "reply's first d actions are those queued ones"}
        return merged

    def _new_session(self) -> PolicySession:
        ensembler = None
        if self.execution["mode"] == "temporal_ensemble":
            ensembler = TemporalEnsembler(float(self.execution.get("temporal_ensemble_coeff", 0.01)),
                                          int(self.execution.get("chunk_size", self.n_action_steps)))
        return PolicySession(self.limits, self.n_action_steps, self.actions_per_reply, ensembler)

    def _state_bounds(self, state_range: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
        margin = self.config.state_range_margin
        if state_range is None or margin is None:
            return {}
        low, high = (np.asarray(v, dtype=np.float64).reshape(-1) for v in state_range)
        span = np.maximum(high - low, 1e-6)
        return {"state_low": (low - margin * span).astype(np.float32),
                "state_high": (high + margin * span).astype(np.float32)}

    def _protocol_metadata(self) -> dict[str, Any]:
        limits = self.request_limits
        return {"protocol": "openpi-websocket-msgpack-numpy", "observation": self.spec.to_dict(),
                "action_dim": self.limits.action_dim, "n_action_steps": self.n_action_steps,
                "actions_per_reply": self.actions_per_reply, "execution": self.execution, "action_limits": self.limits.to_dict(),
                "max_message_bytes": self.config.max_message_bytes, "auth": self.config.api_key is not None,
                "max_prompt_chars": limits.max_prompt_chars, "max_prompt_tokens": self.max_prompt_tokens,
                "request_timeout_s": self.config.request_timeout_s,
                "state_range": None if limits.state_low is None else
                [[float(x) for x in limits.state_low], [float(x) for x in limits.state_high]]}

    def _process_request(self, connection: ws_server.ServerConnection, request: ws_server.Request):
        """Health and readiness checks, the connection cap and shared-token auth, before the handshake."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if request.path == "/readyz":
            return self._readiness(connection)
        if self.active_connections >= self.config.max_connections:
            self.stats.rejected_connections += 1
            log.warning("refused a connection from %s: %d connections open (server.max_connections)",
                        connection.remote_address, self.active_connections)
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"connection limit reached ({self.config.max_connections}); retry later\n")
        key = self.config.api_key
        if key is None:
            return None
        sent = request.headers.get_all("Authorization")
        if len(sent) == 1 and hmac.compare_digest(sent[0].encode(), f"Api-Key {key}".encode()):
            return None
        self.stats.rejected_auth += 1
        log.warning("rejected a connection from %s: missing, repeated or wrong API key", connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing, repeated or wrong API key\n")

    def _readiness(self, connection: ws_server.ServerConnection):
        """503 while a policy call has run past the request deadline (an inference stall), else 200."""
        stalled = self._batcher.stalled_for() if self._batcher is not None else 0.0
        limit = self.config.request_timeout_s
        if limit is not None and stalled > limit:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"inference stalled: one policy call running for {stalled:.1f} s\n")
        return connection.respond(http.HTTPStatus.OK, "READY\n")

    def _check_prompt_tokens(self, prompt: str) -> None:
        if self.prompt_tokens is None:
            return
        count = self.prompt_tokens(prompt)
        if count > self.max_prompt_tokens:
            raise ProtocolError(f"key {self.spec.prompt_key!r}: the prompt is {count} tokens, at most "
                                f"{self.max_prompt_tokens} are accepted (server.max_prompt_tokens)")

    async def _answer(self, session: PolicySession, message: str | bytes) -> dict[str, Any]:
        """Validate one request and produce its reply map; raises `ProtocolError` for a refused request."""
        if isinstance(message, str):
            raise ProtocolError("expected a binary msgpack frame, got a text frame")
        if len(message) > self.config.max_message_bytes:
            raise ProtocolError(f"message of {len(message)} bytes is over the limit of "
                                f"{self.config.max_message_bytes} bytes")
        try:
            decoded = msgpack_numpy.unpackb(message, max_map_len=self.config.max_keys)
        except msgpack_numpy.DecodeError as exc:
            raise ProtocolError(str(exc)) from exc
        observation = validate_observation(decoded, self.spec, self.request_limits)
        self._check_prompt_tokens(observation.prompt)
        if observation.reset:
            session.reset()
        batch_size = 0  # 0: served from this connection's queue, no policy call
        if session.needs_chunk() or observation.prefix is not None:  # a prefix asks for a guided chunk now
            chunk, batch_size = await self._batcher.predict(observation)
            session.push_chunk(chunk)
        actions, report = session.take()
        return {"actions": actions, "safety": report.to_dict(), "predicted": batch_size > 0,
                "batch_size": batch_size}

    async def _reply_error(self, websocket: ws_server.ServerConnection, peer: Any, exc: Exception) -> None:
        self.stats.errors += 1
        if isinstance(exc, NonFiniteChunkError):
            self.stats.nonfinite_chunks += 1
        elif isinstance(exc, InferenceTimeout):
            self.stats.timeouts += 1
        expected = isinstance(exc, (ProtocolError, RuntimeError, ValueError))
        text = bounded(str(exc) if expected else f"internal error: {type(exc).__name__}: {exc}")
        (log.info if expected else log.error)("refused a request from %s: %s", peer, text)
        await websocket.send(f"error: {text}")

    async def _handler(self, websocket: ws_server.ServerConnection) -> None:
        if self.active_connections >= self.config.max_connections:  # raced past the pre-handshake check
            self.stats.rejected_connections += 1
            await websocket.close(1013, f"connection limit reached ({self.config.max_connections})")
            return
        self.active_connections += 1
        self.stats.connections += 1
        session = self._new_session()
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
                except Exception as exc:  # noqa: BLE001 - any failure is this request's error reply
                    await self._reply_error(websocket, peer, exc)
                    continue
                reply["server_timing"] = {"infer_ms": (time.monotonic() - start) * 1000}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await websocket.send(msgpack_numpy.packb(reply))
                prev_total_ms = (time.monotonic() - start) * 1000
        except websockets.ConnectionClosed:
            pass  # the client went away, maybe mid-request: its session dies with it
        finally:
            self.active_connections -= 1
            log.info("connection from %s closed after %d requests", peer, session.requests)

    async def run(self, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (forever when None); sets `self.port` and `ready` once listening."""
        self._batcher = ChunkBatcher(self.policy, self.spec, self.config.max_batch, self.config.device,
                                     timeout_s=self.config.request_timeout_s, rtc_chunk_size=self.rtc_chunk_size)
        worker = asyncio.create_task(self._batcher.run_forever())
        try:
            async with ws_server.serve(self._handler, self.config.host, self.config.port, compression=None,
                                       max_size=self.config.hard_max_message_bytes,
                                       max_queue=self.config.max_queued_frames,
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
