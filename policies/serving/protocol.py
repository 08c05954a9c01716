"""What a robot sends: the observation spec, request validation, and the conversion to a LeRobot batch.

A request is one msgpack-numpy map (openpi's policy protocol): one uint8 `[H, W, 3]` image per camera under
its LeRobot feature name (`observation.images.<camera>`), the proprioceptive state as a float vector under
`observation.state` (when the policy uses one), the instruction under `prompt`, and optionally `reset: true`
to start a new episode. Anything else is refused with a message naming the key and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

PROMPT_KEY = "prompt"
RESET_KEY = "reset"
# Real-time chunking (flow policies served with execution mode rtc): the robot's queued, not yet executed
# actions (float [k, action_dim], environment units, from the observation's step on) and the steps d the reply
# will take to arrive (its first d actions are those the robot executes meanwhile).
PREFIX_KEY = "action_prefix"
DELAY_KEY = "inference_delay"
MAX_ERROR_CHARS = 300  # an error reply or log line never echoes more than this of a request


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters (with a note of how much was cut): errors and logs stay small."""
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def _name_keys(keys: Sequence[Any], shown: int = 4) -> str:
    """A few keys (each cut short) and how many there are, never the whole list."""
    names = [bounded(repr(k), 40) for k in keys[:shown]]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"[{', '.join(names)}]{more}"


class ProtocolError(ValueError):
    """A request the server refuses; the message (sent back to the client) names the problem."""


def _feature_type(feature: Any) -> str:
    kind = feature["type"] if isinstance(feature, Mapping) else feature.type
    return str(getattr(kind, "value", kind)).upper()


def _feature_shape(feature: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in (feature["shape"] if isinstance(feature, Mapping) else feature.shape))


@dataclass(frozen=True)
class ObservationSpec:
    """The keys, shapes and dtypes a request must carry (sent to every client in the connect metadata)."""

    cameras: Mapping[str, tuple[int, int]]  # LeRobot image key -> (height, width)
    state_key: str | None = None
    state_dim: int = 0
    prompt_key: str = PROMPT_KEY
    extra_optional: Sequence[str] = field(default=(RESET_KEY,))

    @classmethod
    def from_features(cls, input_features: Mapping[str, Any]) -> ObservationSpec:
        """Build from a LeRobot policy config's `input_features` (VISUAL `[3, H, W]`, STATE `[D]`)."""
        cameras: dict[str, tuple[int, int]] = {}
        state_key, state_dim = None, 0
        for key, feature in input_features.items():
            kind, shape = _feature_type(feature), _feature_shape(feature)
            if kind == "VISUAL":
                if len(shape) != 3 or shape[0] != 3:
                    raise ProtocolError(f"visual feature {key!r} has shape {list(shape)}, expected [3, H, W]")
                cameras[key] = (shape[1], shape[2])
            elif kind == "STATE":
                state_key, state_dim = key, int(np.prod(shape))
        if not cameras:
            raise ProtocolError(f"the policy has no visual input feature (features: {sorted(input_features)})")
        return cls(cameras=cameras, state_key=state_key, state_dim=state_dim)

    @cached_property
    def required_keys(self) -> list[str]:
        """Every key a request must carry: cameras, state (when used), prompt (computed once, not per request)."""
        return [*self.cameras, *([self.state_key] if self.state_key else []), self.prompt_key]

    @cached_property
    def allowed_keys(self) -> frozenset[str]:
        """The required keys plus the optional ones."""
        return frozenset(self.required_keys) | frozenset(self.extra_optional)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data: what the robot must send, for the connect metadata and the bundle."""
        keys: dict[str, Any] = {k: {"shape": [h, w, 3], "dtype": "uint8"} for k, (h, w) in self.cameras.items()}
        if self.state_key:
            keys[self.state_key] = {"shape": [self.state_dim], "dtype": "float32"}
        keys[self.prompt_key] = {"type": "str"}
        return {"required": keys, "optional": {k: {"type": "bool"} for k in self.extra_optional}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObservationSpec:
        """Inverse of `to_dict`."""
        cameras, state_key, state_dim, prompt_key = {}, None, 0, PROMPT_KEY
        for key, entry in data["required"].items():
            if entry.get("type") == "str":
                prompt_key = key
            elif entry.get("dtype") == "uint8":
                cameras[key] = (int(entry["shape"][0]), int(entry["shape"][1]))
            else:
                state_key, state_dim = key, int(entry["shape"][0])
        return cls(cameras=cameras, state_key=state_key, state_dim=state_dim, prompt_key=prompt_key,
                   extra_optional=tuple(data.get("optional", {})))


@dataclass(frozen=True)
class RequestLimits:
    """Caps checked before any per-key or per-token work, so a request's cost is bounded by the settings."""

    max_keys: int = 16  # top-level keys in one request
    max_prompt_chars: int = 2000  # checked before tokenising
    state_low: np.ndarray | None = None  # plausible state range (from the bundle's statistics), inclusive
    state_high: np.ndarray | None = None
    rtc_chunk: tuple[int, int] | None = None  # (chunk_size, action_dim) when action_prefix is accepted


@dataclass
class Observation:
    """One validated request: images uint8 `[H, W, 3]`, state float32 `[D]` or None, prompt, reset flag."""

    images: dict[str, np.ndarray]
    state: np.ndarray | None
    prompt: str
    reset: bool = False
    prefix: np.ndarray | None = None  # real-time chunking: the robot's queued actions [k, action_dim]
    delay: int = 0


def _check_image(key: str, value: Any, size: tuple[int, int]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"key {key!r}: expected a uint8 array of shape [{size[0]}, {size[1]}, 3], "
                            f"got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ProtocolError(f"key {key!r}: wrong dtype {value.dtype}, expected uint8")
    if value.shape != (*size, 3):
        raise ProtocolError(f"key {key!r}: wrong shape {list(value.shape)}, expected [{size[0]}, {size[1]}, 3]")
    return value


def _check_state(key: str, value: Any, dim: int, limits: RequestLimits) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"key {key!r}: expected a float array of shape [{dim}], got {type(value).__name__}")
    if value.dtype.kind != "f":
        raise ProtocolError(f"key {key!r}: wrong dtype {value.dtype}, expected a float dtype (float32)")
    if value.shape != (dim,):
        raise ProtocolError(f"key {key!r}: wrong shape {list(value.shape)}, expected [{dim}]")
    # Checked after the cast the model sees: float64 1e300 is finite but becomes inf as float32.
    with np.errstate(over="ignore", invalid="ignore"):
        state = value.astype(np.float32)
    bad = ~np.isfinite(state)
    if bad.any():
        raise ProtocolError(f"key {key!r}: element {int(np.argmax(bad))} is NaN or infinite as float32 "
                            f"(sent {bounded(str(value[int(np.argmax(bad))]), 40)})")
    if limits.state_low is not None and limits.state_high is not None:
        out = (state < limits.state_low) | (state > limits.state_high)
        if out.any():
            i = int(np.argmax(out))
            raise ProtocolError(f"key {key!r}: element {i} = {state[i]:.6g} is outside the plausible range "
                                f"[{limits.state_low[i]:.6g}, {limits.state_high[i]:.6g}] derived from the "
                                "training statistics (server.state_range_margin); check the robot's units")
    return state


def validate_observation(obs: Any, spec: ObservationSpec, limits: RequestLimits | None = None) -> Observation:
    """Check a decoded request against `spec`; raise `ProtocolError` naming the first problem."""
    limits = limits or RequestLimits()
    if not isinstance(obs, Mapping):
        raise ProtocolError(f"the request must be a map of observation keys, got {type(obs).__name__}")
    required = spec.required_keys
    if len(obs) > limits.max_keys:
        raise ProtocolError(f"the request has {len(obs)} keys, at most {limits.max_keys} are accepted; "
                            f"expected {required} (optional: {list(spec.extra_optional)})")
    allowed = spec.allowed_keys | ({PREFIX_KEY, DELAY_KEY} if limits.rtc_chunk else frozenset())
    unknown = sorted(set(obs) - allowed, key=str)
    if unknown:
        raise ProtocolError(f"unknown key(s) {_name_keys(unknown)}; expected {required} "
                            f"(optional: {list(spec.extra_optional)})")
    missing = [key for key in required if key not in obs]
    if missing:
        raise ProtocolError(f"missing key(s) {missing}; expected {required}")
    images = {key: _check_image(key, obs[key], size) for key, size in spec.cameras.items()}
    state = _check_state(spec.state_key, obs[spec.state_key], spec.state_dim, limits) if spec.state_key else None
    prompt = obs[spec.prompt_key]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProtocolError(f"key {spec.prompt_key!r}: expected a non-empty string, got {prompt!r:.60}")
    if len(prompt) > limits.max_prompt_chars:
        raise ProtocolError(f"key {spec.prompt_key!r}: the prompt has {len(prompt)} characters, at most "
                            f"{limits.max_prompt_chars} are accepted (server.max_prompt_chars)")
    reset = obs.get(RESET_KEY, False)
    if not isinstance(reset, (bool, np.bool_)):
        raise ProtocolError(f"key {RESET_KEY!r}: expected a bool, got {type(reset).__name__}")
    prefix, delay = _check_prefix(obs, limits.rtc_chunk) if PREFIX_KEY in obs else (None, 0)
    return Observation(images=images, state=state, prompt=prompt, reset=bool(reset), prefix=prefix, delay=delay)


def _check_prefix(obs: Mapping, rtc_chunk: tuple[int, int]) -> tuple[np.ndarray, int]:
    chunk_size, action_dim = rtc_chunk
    value = obs[PREFIX_KEY]
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim != 2 \
            or not 1 <= value.shape[0] <= chunk_size or value.shape[1] != action_dim:
        got = list(value.shape) if isinstance(value, np.ndarray) else type(value).__name__
        raise ProtocolError(f"key {PREFIX_KEY!r}: expected a float array [k, {action_dim}] with 1 <= k <= "
                            f"{chunk_size} (the robot's queued actions), got {got}")
    with np.errstate(over="ignore", invalid="ignore"):
        prefix = value.astype(np.float32)
    if not np.isfinite(prefix).all():
        raise ProtocolError(f"key {PREFIX_KEY!r}: contains NaN or infinity as float32")
    delay = obs.get(DELAY_KEY, 0)
    if not isinstance(delay, (int, np.integer)) or isinstance(delay, bool) or not 0 <= delay <= prefix.shape[0]:
        raise ProtocolError(f"key {DELAY_KEY!r}: expected an int in [0, {prefix.shape[0]}] (at most the queued "
                            f"actions), got {bounded(repr(delay), 40)}")
    return prefix, int(delay)


def to_batch(observations: Sequence[Observation], spec: ObservationSpec,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Stack observations into a raw LeRobot batch: float images `[B, 3, H, W]` in [0, 1], state, task."""
    batch: dict[str, Any] = {}
    for key in spec.cameras:
        pixels = np.stack([o.images[key] for o in observations])  # [B, H, W, 3] uint8
        batch[key] = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if spec.state_key:
        batch[spec.state_key] = torch.from_numpy(np.stack([o.state for o in observations])).to(device)
    batch["task"] = [o.prompt for o in observations]
    return batch
