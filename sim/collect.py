"""`vst-vla collect`: scripted-expert demonstrations recorded into a local LeRobot dataset (v3).

The dataset is written into a temporary sibling of its final folder and renamed (with a `_COMPLETE`
marker) only after `finalize()`, so a killed run never leaves something that looks like a dataset.
Failed episodes are dropped by default and counted; LeRobot computes per-episode and aggregate statistics
(`meta/stats.json`). Each frame's `task` is the MetaWorld instruction.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sim.env_spec import EnvSpec, env_spec, scripted_expert
from sim.rollout import EpisodeTrace, task_episodes
from vst_vla.atomic import atomic_directory, write_json
from vst_vla.hydra_run import run_dir

log = logging.getLogger(__name__)


@dataclass
class CollectSummary:
    """What a collection run recorded."""

    root: str
    tasks: list[str]
    attempted: int
    kept: int
    dropped: int
    frames: int
    wall_s: float
    frames_per_s: float
    env_steps_per_s: float
    per_task: dict[str, dict[str, int]]

    def line(self) -> str:
        return (f"collected {self.kept}/{self.attempted} episodes ({self.dropped} failed, dropped), {self.frames} "
                f"frames in {self.wall_s:.1f} s = {self.frames_per_s:.1f} frames/s "
                f"({self.env_steps_per_s:.1f} env steps/s) -> {self.root}")


def _write_episode(dataset: Any, trace: EpisodeTrace, spec: EnvSpec, task_text: str) -> None:
    keys = [k for k in spec.features if k != "action"]
    for obs, action in zip(trace.observations, trace.actions):
        frame = {k: obs[k] for k in keys}
        frame["action"] = action
        frame["task"] = task_text
        dataset.add_frame(frame)
    dataset.save_episode()


def _remove_empty_dirs(folder: Path) -> None:
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder)


def collect_dataset(env_cfg: Any, root: str | Path, episodes: int, repo_id: str = "local/metaworld",
                    seed: int = 0, noise_std: float = 0.0, n_envs: int = 1, vector_mode: str = "sync",
                    video: bool = False, keep_failed: bool = False, record_environment_state: bool = False,
                    overwrite: bool = False) -> CollectSummary:
    """Record `episodes` scripted-expert episodes per task of `env_cfg` into a LeRobot dataset at `root`."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    spec = env_spec(env_cfg, video=video, include_env_state=record_environment_state)
    expert = scripted_expert(str(env_cfg.get("name", "metaworld")), noise_std=noise_std, seed=seed)
    n_envs = max(1, min(int(n_envs), int(episodes)))
    per_task = {task: {"attempted": 0, "kept": 0, "dropped": 0} for task in spec.tasks}
    steps, frames, started = 0, 0, time.perf_counter()
    bar = tqdm(total=episodes * len(spec.tasks), desc="collect", unit="ep")
    with atomic_directory(root, overwrite=overwrite) as tmp:
        tmp.rmdir()  # LeRobotDataset.create insists on making the root itself
        dataset = LeRobotDataset.create(repo_id=repo_id, fps=spec.fps, features=spec.features, root=tmp,
                                        robot_type=spec.robot_type, use_videos=video)
        with closing(task_episodes(env_cfg, spec.tasks, expert, episodes, n_envs, vector_mode, seed,
                                   spec.max_episode_steps, record=True, progress=bar)) as traces:
            for task, trace in traces:
                counts = per_task[task]
                steps += trace.length
                counts["attempted"] += 1
                if trace.success or keep_failed:
                    _write_episode(dataset, trace, spec, spec.instructions[task])
                    counts["kept"] += 1
                    frames += trace.length
                else:
                    counts["dropped"] += 1
                bar.set_postfix(kept=sum(c["kept"] for c in per_task.values()),
                                dropped=sum(c["dropped"] for c in per_task.values()))
        bar.close()
        kept = sum(c["kept"] for c in per_task.values())
        if kept == 0:
            raise RuntimeError(f"no episode of {', '.join(spec.tasks)} succeeded; nothing to record "
                               "(raise env.max_episode_steps or lower noise_std)")
        dataset.finalize()
        _remove_empty_dirs(tmp / "images")  # the image writer's staging folder, emptied into the parquet files
        wall = time.perf_counter() - started
        summary = CollectSummary(root=str(root), tasks=list(spec.tasks),
                                 attempted=sum(c["attempted"] for c in per_task.values()), kept=kept,
                                 dropped=sum(c["dropped"] for c in per_task.values()), frames=frames,
                                 wall_s=wall, frames_per_s=frames / wall, env_steps_per_s=steps / wall,
                                 per_task=per_task)
        write_json(tmp / "collect.json", asdict(summary))
    return summary


def run(cfg: DictConfig) -> CollectSummary:
    """Entry point of `vst-vla collect` (config: configs/collect.yaml)."""
    out = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir() / "dataset"
    summary = collect_dataset(cfg.env, out, episodes=int(cfg.episodes), repo_id=str(cfg.repo_id),
                              seed=int(cfg.seed), noise_std=float(cfg.noise_std), n_envs=int(cfg.n_envs),
                              vector_mode=str(cfg.vector), video=bool(cfg.video), keep_failed=bool(cfg.keep_failed),
                              record_environment_state=bool(cfg.record_environment_state),
                              overwrite=bool(cfg.overwrite))
    log.info("collect config:\n%s", OmegaConf.to_yaml(cfg))
    print(summary.line())
    return summary
