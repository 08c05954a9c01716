"""Action safety at the edge: per-dimension bounds and a maximum change per step.

`ActionLimits` is stored in every export bundle (`action_limits.json`); `SafetyFilter` holds one robot
connection's last served action and clips each new action into `[low, high]` and into
`[previous - max_delta, previous + max_delta]`, counting what it changed. Non-finite actions never reach the
robot: they are replaced by the previous action (or the bounds-clipped zero before the first one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vst_vla.atomic import write_json


class LimitsError(ValueError):
    """Action limits that are inconsistent or do not fit the policy; the message names the field."""


def _vector(name: str, values: Sequence[float] | np.ndarray | None, dim: int) -> np.ndarray | None:
    if values is None:
        return None
    # float32, the dtype actions are served in, so a clipped action compares <= its bound exactly.
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (dim,):
        raise LimitsError(f"action limit {name!r} has shape {list(array.shape)}, expected [{dim}]")
    if np.isnan(array).any():
        raise LimitsError(f"action limit {name!r} contains NaN")
    return array


@dataclass(frozen=True)
class ActionLimits:
    """Per-dimension bounds and per-step rate limits of an action vector (None: that limit is off)."""

    action_dim: int
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    max_delta: np.ndarray | None = None
    names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("low", "high", "max_delta"):
            object.__setattr__(self, name, _vector(name, getattr(self, name), self.action_dim))
        if self.low is not None and self.high is not None and (self.low > self.high).any():
            bad = int(np.argmax(self.low > self.high))
            raise LimitsError(f"action limit low[{bad}]={self.low[bad]} is above high[{bad}]={self.high[bad]}")
        if self.max_delta is not None and (self.max_delta <= 0).any():
            raise LimitsError("action limit 'max_delta' must be positive in every dimension")
        if self.names and len(self.names) != self.action_dim:
            raise LimitsError(f"action limit names has {len(self.names)} entries, expected {self.action_dim}")

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], margin: float = 0.05,
                   max_delta_fraction: float | None = 0.5, names: Sequence[str] = ()) -> ActionLimits:
        """Bounds from the dataset's action min/max widened by `margin` of the range on each side.

        `max_delta_fraction` sets the per-step change limit as that fraction of the widened range.
        """
        if "min" not in stats or "max" not in stats:
            raise LimitsError(f"action statistics need 'min' and 'max', got keys {sorted(stats)}")
        low = np.asarray(stats["min"], dtype=np.float64).reshape(-1)
        high = np.asarray(stats["max"], dtype=np.float64).reshape(-1)
        span = np.maximum(high - low, 1e-6)
        low, high = low - margin * span, high + margin * span
        delta = None if max_delta_fraction is None else max_delta_fraction * (high - low)
        return cls(action_dim=low.shape[0], low=low, high=high, max_delta=delta, names=tuple(names))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON and msgpack friendly)."""
        as_list = lambda a: None if a is None else [float(x) for x in a]
        return {"action_dim": self.action_dim, "low": as_list(self.low), "high": as_list(self.high),
                "max_delta": as_list(self.max_delta), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionLimits:
        """Inverse of `to_dict`; raises `LimitsError` naming a missing field."""
        if "action_dim" not in data:
            raise LimitsError("action limits need 'action_dim'")
        return cls(action_dim=int(data["action_dim"]), low=data.get("low"), high=data.get("high"),
                   max_delta=data.get("max_delta"), names=tuple(data.get("names") or ()))

    def save(self, path: str | Path) -> Path:
        """Write the limits as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ActionLimits:
        """Read limits written by `save`; the error names the file when it is malformed."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, LimitsError) as exc:
            raise LimitsError(f"{path}: {exc}") from exc


@dataclass
class SafetyReport:
    """What the filter changed in one call (element counts by reason and by dimension) and since the
    connection started. An element clipped by both the bounds and the rate limit counts once in `clipped`."""

    clipped_bounds: int = 0
    clipped_rate: int = 0
    nonfinite: int = 0
    clipped_total: int = 0
    per_dim: list[int] = field(default_factory=list)

    @property
    def clipped(self) -> int:
        """Elements changed in this call, for whatever reason."""
        return int(sum(self.per_dim))

    def to_dict(self) -> dict[str, Any]:
        """Response metadata: this call's counts and the connection's running total."""
        return {"clipped": self.clipped, "clipped_bounds": self.clipped_bounds, "clipped_rate": self.clipped_rate,
                "nonfinite": self.nonfinite, "clipped_per_dim": list(self.per_dim),
                "clipped_total": self.clipped_total}


class SafetyFilter:
    """Enforces `ActionLimits` on a stream of actions for one robot; keeps the last served action."""

    def __init__(self, limits: ActionLimits) -> None:
        self.limits = limits
        self._previous: np.ndarray | None = None
        self._total = 0

    def reset(self) -> None:
        """Forget the previous action (a new episode may start anywhere inside the bounds)."""
        self._previous = None

    def _fallback(self) -> np.ndarray:
        if self._previous is not None:
            return self._previous
        zero = np.zeros(self.limits.action_dim, dtype=np.float32)
        return np.clip(zero, self.limits.low, self.limits.high) if self.limits.low is not None else zero

    def _step(self, action: np.ndarray, report: SafetyReport) -> np.ndarray:
        raw = np.asarray(action, dtype=np.float32)
        out = raw.copy()
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = self._fallback()[bad]
            report.nonfinite += int(bad.sum())
        lim = self.limits
        if lim.low is not None or lim.high is not None:
            bounded = np.clip(out, lim.low, lim.high)
            report.clipped_bounds += int((bounded != out).sum())
            out = bounded
        if lim.max_delta is not None and self._previous is not None:
            # The previous action lies inside the bounds, so this window intersects them: both hold.
            lo, hi = self._previous - lim.max_delta, self._previous + lim.max_delta
            if lim.low is not None:
                lo = np.maximum(lo, lim.low)
            if lim.high is not None:
                hi = np.minimum(hi, lim.high)
            limited = np.clip(out, lo, hi)
            report.clipped_rate += int((limited != out).sum())
            out = limited
        changed = bad | (out != raw)
        report.per_dim = [n + int(c) for n, c in zip(report.per_dim, changed, strict=True)]
        self._previous = out
        return out

    def apply(self, actions: np.ndarray) -> tuple[np.ndarray, SafetyReport]:
        """Clip `[n, action_dim]` actions served in order; returns (safe float32 actions, report)."""
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != self.limits.action_dim:
            raise LimitsError(f"actions have shape {list(actions.shape)}, expected [n, {self.limits.action_dim}]")
        report = SafetyReport(per_dim=[0] * self.limits.action_dim)
        rows = [self._step(row, report) for row in actions]
        safe = np.stack(rows) if rows else np.zeros((0, self.limits.action_dim), dtype=np.float32)
        self._total += report.clipped
        report.clipped_total = self._total
        return safe, report
