"""Vectorised rollout evaluation of any policy with LeRobot's interface.

The policy contract (what `evaluate` and `vst-vla eval-sim` accept):
- any object with `reset()` and `select_action(batch) -> Tensor [B, action_dim]`, LeRobot's
  `PreTrainedPolicy` interface. `reset()` is called before each batch of B parallel episodes;
  `select_action` is called once per env step under `torch.inference_mode()`.
- `batch` is the raw LeRobot batch of `sim.policy_io.observation_to_batch`: `observation.images.<camera>`
  float32 [B, 3, H, W] in [0, 1], `observation.state` float32 [B, 4], `observation.environment_state`
  float32 [B, 39] (privileged; only the scripted expert should read it) and `task` (list of B
  instructions). Nothing is normalised: a learned policy applies its own pre/post-processors (LeRobot's
  `make_pre_post_processors`) inside `select_action` and returns actions in env units ([-1, 1], 4-D).
- `vst-vla eval-sim policy=<name>` builds the policy with `hydra.utils.instantiate(cfg.policy)` on the
  `configs/policy/<name>.yaml` node, nothing added: that node's `_target_` is a class or a loader function
  (e.g. `policies.load_policy` with `path`, `device`); interpolations like `${env.task}` resolve against
  the eval-sim config. sim/ never imports the policy's package; the config names it.
- Optional: `seed_episodes(seeds)`, called after `reset()` with each row's episode seed, lets a policy that
  samples (the noisy expert, the random baseline) draw per-episode streams, so an episode's actions do not
  depend on the episodes run before it (what makes `collect` resumable episode by episode). A policy that
  samples through torch gets the same from `rollout_batch`: each batch runs under torch's generator seeded
  with the batch's first episode seed (the caller's generator state is restored afterwards).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from sim.env_spec import env_spec, make_vector_env
from sim.eval_report import Episode, EvalResult, journal_episode, mean_squared_jerk, read_episode_journal
from sim.metaworld_env import image_key
from sim.policy_io import actions_to_numpy, observation_to_batch
from sim.video import write_mp4

log = logging.getLogger(__name__)


class Policy(Protocol):
    """LeRobot's policy interface, as far as rollouts need it."""

    def reset(self) -> None: ...

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor: ...


@dataclass
class EpisodeTrace:
    """One sub-env's episode from a batch: outcome, and (when recorded) its observations and actions."""

    seed: int
    success: bool = False
    length: int = 0
    sum_reward: float = 0.0
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)  # only when recorded
    actions: list[np.ndarray] = field(default_factory=list)  # the actions the env executed, in order


def _success_flags(info: dict[str, Any], n: int) -> np.ndarray:
    flags = np.asarray(info.get("is_success", np.zeros(n, bool)), dtype=bool)
    mask = np.asarray(info.get("_is_success", np.ones(n, bool)), dtype=bool)
    return flags & mask


def rollout_batch(vec_env: Any, policy: Policy, seeds: list[int], max_steps: int,
                  record: bool = False) -> list[EpisodeTrace]:
    """Run one episode in each sub-env (seeded by `seeds`) until all have ended; return their traces."""
    from lerobot.envs.utils import NEW_ROLLOUT_OPTION

    n = vec_env.num_envs
    traces = [EpisodeTrace(seed=int(s)) for s in seeds]
    policy.reset()
    if hasattr(policy, "seed_episodes"):
        policy.seed_episodes([int(s) for s in seeds])
    obs, _ = vec_env.reset(seed=[int(s) for s in seeds], options={NEW_ROLLOUT_OPTION: True})
    task_texts = list(vec_env.call("task_description"))
    action_dim = int(vec_env.single_action_space.shape[0])  # 4 in MetaWorld, 7 in LIBERO
    active = np.ones(n, dtype=bool)
    for _ in range(max_steps):
        batch = observation_to_batch(obs, task_texts)
        with torch.inference_mode():
            actions = actions_to_numpy(policy.select_action(batch), n, action_dim)
        for i in np.flatnonzero(active):  # executed actions are always kept: the smoothness measure reads them
            traces[i].actions.append(actions[i].copy())
            if record:
                traces[i].observations.append({k: np.array(v[i]) for k, v in obs.items()})
        obs, reward, terminated, truncated, info = vec_env.step(actions)
        success = _success_flags(info, n)
        for i in np.flatnonzero(active):
            traces[i].length += 1
            traces[i].sum_reward += float(reward[i])
            traces[i].success |= bool(success[i])
        active &= ~(np.asarray(terminated) | np.asarray(truncated))
        if not active.any():
            break
    return traces


def run_task_episodes(vec_env: Any, policy: Policy, n_episodes: int, seed: int, max_steps: int,
                      record: bool = False, progress: tqdm | None = None, start: int = 0):
    """Yield the traces of episodes `start`..`n_episodes - 1` of one task, in batches of `vec_env.num_envs`;
    episode i uses seed + i (`trace.seed - seed` is its index)."""
    n = vec_env.num_envs
    for first in range(start, n_episodes, n):
        seeds = [seed + first + j for j in range(n)]
        with torch.random.fork_rng():
            torch.manual_seed(seeds[0])  # a sampling policy's draws depend on the batch, not on what ran before
            traces = rollout_batch(vec_env, policy, seeds, max_steps, record)
        for trace in traces[: n_episodes - first]:
            if progress is not None:
                progress.update(1)
            yield trace


def task_episodes(env_cfg: Any, tasks: Sequence[str], policy: Policy, n_episodes: int, n_envs: int,
                  vector_mode: str, seed: int, max_steps: int, record: bool = False,
                  progress: tqdm | None = None,
                  starts: Mapping[str, int] | None = None) -> Iterator[tuple[str, EpisodeTrace]]:
    """Yield (task, trace) for `n_episodes` episodes of each task, each task on its own vector env;
    `starts[task]` skips that task's first episodes (a resumed run).

    Close the generator (`contextlib.closing`) so a consumer's error shuts the open vector env at once.
    """
    for task in tasks:
        start = int((starts or {}).get(task, 0))
        if start >= n_episodes:
            continue
        vec_env = make_vector_env(env_cfg, task, n_envs, vector_mode)
        try:
            for trace in run_task_episodes(vec_env, policy, n_episodes, seed, max_steps, record, progress, start):
                yield task, trace
        finally:
            vec_env.close()


def _video_path(video_dir: Path, task: str, index: int) -> Path:
    return video_dir / f"{task}_ep{index:03d}.mp4"


def evaluate(policy: Policy, env_cfg: Any, n_episodes: int, n_envs: int = 1, vector_mode: str = "sync",
             seed: int = 1000, video_dir: str | Path | None = None, n_videos: int = 0,
             policy_name: str | None = None, progress: bool = True, journal: Path | None = None,
             meta: Mapping[str, Any] | None = None) -> EvalResult:
    """Roll `policy` out for `n_episodes` per task of `env_cfg` on vector envs; see the module doc.

    With a `journal` folder, each finished episode is recorded there, and those an interrupted run of the same
    settings recorded are kept: the run restarts at the first unfinished batch (batches keep their seeds, so
    the results equal an uninterrupted run's). `meta` is added to the result's meta (e.g. the latency setting).
    """
    spec = env_spec(env_cfg)
    if hasattr(policy, "action_dim") and policy.action_dim is None:  # e.g. policy=random: the env's action size
        policy.action_dim = int(spec.features["action"]["shape"][0])
    n_envs = max(1, min(int(n_envs), int(n_episodes)))
    camera_key = spec.image_keys[0]
    name = policy_name or type(policy).__name__
    record = video_dir is not None and n_videos > 0
    by_task = read_episode_journal(journal, spec.tasks, n_episodes) if journal else {t: [] for t in spec.tasks}
    starts = {task: len(done) // n_envs * n_envs for task, done in by_task.items()}
    started = time.perf_counter()
    bar = tqdm(total=n_episodes * len(spec.tasks), initial=sum(starts.values()), desc=f"eval {name}", unit="ep",
               disable=not progress)
    with closing(task_episodes(env_cfg, spec.tasks, policy, n_episodes, n_envs, vector_mode, seed,
                               spec.max_episode_steps, record, bar, starts)) as traces:
        for task, trace in traces:
            index = trace.seed - seed
            if index < len(by_task[task]):
                continue  # finished before the interruption (rerun only to keep its batch's seeds): kept as is
            video = None
            if record and index < n_videos:
                frames = [o[camera_key] for o in trace.observations]
                path = write_mp4(_video_path(Path(video_dir), task, index), frames, fps=20,
                                 upscale=max(1, 256 // frames[0].shape[0]))
                video = str(path.relative_to(Path(video_dir).parent))  # relative: reports stay portable
            episode = Episode(task=task, seed=trace.seed, success=trace.success, length=trace.length,
                              sum_reward=trace.sum_reward, video=video,
                              mean_sq_jerk=mean_squared_jerk(np.asarray(trace.actions)))
            by_task[task].append(episode)
            if journal is not None:
                journal_episode(journal, index, episode)
            finished = [e for eps in by_task.values() for e in eps]
            bar.set_postfix(success=f"{sum(e.success for e in finished)}/{len(finished)}")
    bar.close()
    episodes = [e for task in spec.tasks for e in by_task[task]]
    result = EvalResult(policy=name, episodes=episodes, n_envs=n_envs, vector_mode=vector_mode,
                        wall_s=time.perf_counter() - started, env_steps=sum(e.length for e in episodes),
                        meta={"tasks": list(spec.tasks), "seed": seed, "camera": camera_key,
                              "image_size": spec.features[camera_key]["shape"][0],
                              "max_episode_steps": spec.max_episode_steps, **(meta or {})})
    log.info(result.summary_line())
    return result


__all__ = ["EpisodeTrace", "Policy", "evaluate", "image_key", "rollout_batch", "run_task_episodes", "task_episodes"]
