"""Rollout evaluation results: per-episode records, success rate with a Wilson interval, action smoothness
(mean squared jerk), JSON and markdown."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vst_vla.atomic import write_json, write_text


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_squared_jerk(actions: np.ndarray) -> float | None:
    """Mean over steps of the squared norm of the third difference of executed actions [T, A]
    (a_{k+3} - 3 a_{k+2} + 3 a_{k+1} - a_k, per control step); None for fewer than 4 actions."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.shape[0] < 4:
        return None
    jerk = np.diff(actions, n=3, axis=0)
    return float(np.mean(np.sum(jerk**2, axis=-1)))


def _mean_jerk(episodes: list[Episode]) -> float | None:
    values = [e.mean_sq_jerk for e in episodes if e.mean_sq_jerk is not None]
    return statistics.fmean(values) if values else None


def _fmt_jerk(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


@dataclass
class Episode:
    """One evaluated episode."""

    task: str
    seed: int
    success: bool
    length: int
    sum_reward: float
    video: str | None = None
    mean_sq_jerk: float | None = None  # smoothness of the executed actions (`mean_squared_jerk`)


@dataclass
class EvalResult:
    """Success statistics of a policy over rollout episodes (overall and per task)."""

    policy: str
    episodes: list[Episode]
    n_envs: int
    vector_mode: str
    wall_s: float
    env_steps: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / self.n_episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n_episodes)

    @property
    def mean_sq_jerk(self) -> float | None:
        """The episodes' mean squared action jerk, averaged over episodes (None when none has 4 steps)."""
        return _mean_jerk(self.episodes)

    def per_task(self) -> dict[str, dict[str, float]]:
        """Success rate, interval, mean length and mean squared jerk for each task."""
        out = {}
        for task in dict.fromkeys(e.task for e in self.episodes):
            eps = [e for e in self.episodes if e.task == task]
            wins = sum(e.success for e in eps)
            low, high = wilson_interval(wins, len(eps))
            out[task] = {"episodes": len(eps), "successes": wins, "success_rate": wins / len(eps),
                         "ci95_low": low, "ci95_high": high,
                         "mean_length": sum(e.length for e in eps) / len(eps), "mean_sq_jerk": _mean_jerk(eps)}
        return out

    def summary_line(self) -> str:
        low, high = self.interval
        return (f"{self.policy}: success {self.successes}/{self.n_episodes} = {self.success_rate:.1%} "
                f"(95% Wilson CI {low:.1%}-{high:.1%}), mean sq jerk {_fmt_jerk(self.mean_sq_jerk)}, {self.env_steps / max(self.wall_s, 1e-9):.1f} env steps/s")

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"policy": self.policy, "n_episodes": self.n_episodes, "successes": self.successes,
                "success_rate": self.success_rate, "ci95_low": low, "ci95_high": high,
                "mean_length": sum(e.length for e in self.episodes) / max(1, self.n_episodes),
                "mean_sum_reward": sum(e.sum_reward for e in self.episodes) / max(1, self.n_episodes),
                "mean_sq_jerk": self.mean_sq_jerk,
                "n_envs": self.n_envs, "vector_mode": self.vector_mode, "wall_s": self.wall_s,
                "env_steps": self.env_steps, "env_steps_per_s": self.env_steps / max(self.wall_s, 1e-9),
                "per_task": self.per_task(), "meta": self.meta, "episodes": [asdict(e) for e in self.episodes]}

    def to_markdown(self) -> str:
        low, high = self.interval
        lines = [f"# Rollout evaluation: {self.policy}", "",
                 (f"**Success {self.successes}/{self.n_episodes} = {self.success_rate:.1%}** "
                 f"(95 % Wilson interval {low:.1%} - {high:.1%}); {self.n_envs} envs, {self.vector_mode} "
                 f"vector env, {self.env_steps} env steps in {self.wall_s:.1f} s; mean squared action jerk "
                 f"{_fmt_jerk(self.mean_sq_jerk)}{self._latency_note()}."), "",
                 "| task | episodes | success | 95 % CI | mean length | mean sq jerk |", "|---|---|---|---|---|---|"]
        for task, s in self.per_task().items():
            lines.append(f"| {task} | {s['episodes']} | {s['success_rate']:.1%} | "
                         f"{s['ci95_low']:.1%} - {s['ci95_high']:.1%} | {s['mean_length']:.1f} | "
                         f"{_fmt_jerk(s['mean_sq_jerk'])} |")
        lines += ["", "| # | task | seed | success | length | return | jerk | video |", "|---|---|---|---|---|---|---|---|"]
        for i, e in enumerate(self.episodes):
            video = f"[mp4]({e.video})" if e.video else ""
            lines.append(f"| {i} | {e.task} | {e.seed} | {'yes' if e.success else 'no'} | {e.length} | "
                         f"{e.sum_reward:.2f} | {_fmt_jerk(e.mean_sq_jerk)} | {video} |")
        return "\n".join(lines) + "\n"

    def _latency_note(self) -> str:
        latency = self.meta.get("latency")
        if not latency:
            return ""
        return (f"; execution `{latency['execution_mode']}` under {latency['inference_delay_steps']} steps of "
                "simulated inference latency")

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write `eval.json` and `eval.md` (atomically) into `out_dir`."""
        out_dir = Path(out_dir)
        return write_json(out_dir / "eval.json", self.to_dict()), write_text(out_dir / "eval.md", self.to_markdown())


def _journal_path(journal: Path, task: str, index: int) -> Path:
    return journal / task / f"{index:06d}.json"


def journal_episode(journal: Path, index: int, episode: Episode) -> None:
    """Record a finished episode (atomically), so an interrupted evaluation keeps it."""
    write_json(_journal_path(journal, episode.task, index), asdict(episode))


def read_episode_journal(journal: Path, tasks: list[str] | tuple[str, ...], n_episodes: int) -> dict[str, list[Episode]]:
    """The episodes an interrupted evaluation finished, per task (each task's are recorded in order)."""
    done: dict[str, list[Episode]] = {}
    for task in tasks:
        done[task] = []
        while len(done[task]) < n_episodes and _journal_path(journal, task, len(done[task])).is_file():
            done[task].append(Episode(**json.loads(_journal_path(journal, task, len(done[task])).read_text())))
    return done
