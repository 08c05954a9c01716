"""`vst-vla collect`: scripted-expert demonstrations recorded into a local LeRobot dataset (v3).

The dataset is built in `.NAME.partial` beside its final folder and renamed (with a `_COMPLETE` manifest)
only after `finalize()`, so a killed run never leaves something that looks like a dataset. A rerun of the same
command resumes: every finished episode is kept, and the dataset equals an uninterrupted run's (episode i
uses seed + i and the expert's per-episode noise stream, so an episode does not depend on those before it).

Why episodes are journaled rather than appended to the LeRobotDataset as they finish: LeRobot 0.6.1 keeps
the data parquet writer open and buffers episode metadata (10 episodes) until `finalize()`, so a run killed
before it leaves parquet files without footers and episodes missing from `meta/episodes`;
`LeRobotDataset.resume` only appends to a dataset that was finalized. Each finished episode is therefore
written (atomically, fsynced) as `episodes/<task>/<index>.npz` in the partial folder, and the dataset is
built from those files in order once all are there, so a resumed run builds exactly what an uninterrupted
one does. A folder that is not ours is never written into (see `vst_vla.atomic`).

Failed episodes are dropped by default and counted; LeRobot computes per-episode and aggregate statistics
(`meta/stats.json`). Each frame's `task` is the task's instruction (MetaWorld or LIBERO).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sim.env_spec import EnvSpec, env_spec, scripted_expert
from sim.rollout import EpisodeTrace, task_episodes
from vst_vla.atomic import atomic_directory, reusable, write_bytes, write_json
from vst_vla.errors import UserError
from vst_vla.hydra_run import run_dir
from vst_vla.video_decoding import quiet_torchcodec

log = logging.getLogger(__name__)

DATASET_KIND = "lerobot-dataset"
_JOURNAL, _BUILD = "episodes", "dataset"


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
    resumed_episodes: int = 0
    reused: bool = False

    def line(self) -> str:
        if self.reused:
            return (f"collect: {self.root} already holds these {self.kept} episodes ({self.frames} frames), "
                    "reusing it (overwrite=true collects again)")
        resumed = f", {self.resumed_episodes} kept from an interrupted run" if self.resumed_episodes else ""
        return (f"collected {self.kept}/{self.attempted} episodes ({self.dropped} failed, dropped{resumed}), "
                f"{self.frames} frames in {self.wall_s:.1f} s = {self.frames_per_s:.1f} frames/s "
                f"({self.env_steps_per_s:.1f} env steps/s) -> {self.root}")


def _journal_path(partial: Path, task: str, index: int) -> Path:
    return partial / _JOURNAL / task / f"{index:06d}.npz"


def _journal_episode(path: Path, trace: EpisodeTrace, spec: EnvSpec, keep: bool) -> None:
    """One attempted episode, durably: its outcome, and its frames and actions when it is kept."""
    arrays: dict[str, np.ndarray] = {"seed": np.int64(trace.seed), "success": np.bool_(trace.success),
                                     "length": np.int64(trace.length), "sum_reward": np.float64(trace.sum_reward)}
    if keep:
        for key in spec.features:
            if key != "action":
                arrays[key] = np.stack([obs[key] for obs in trace.observations])
        arrays["action"] = np.stack(trace.actions)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def _finished_episodes(partial: Path, tasks: tuple[str, ...], episodes: int) -> dict[str, int]:
    """How many episodes of each task an interrupted run finished (they are journaled in order)."""
    done = {}
    for task in tasks:
        done[task] = 0
        while done[task] < episodes and _journal_path(partial, task, done[task]).is_file():
            done[task] += 1
    return done


def _write_episode(dataset: Any, record: Any, spec: EnvSpec, task_text: str) -> int:
    keys = [k for k in spec.features if k != "action"]
    actions = record["action"]
    for t in range(len(actions)):
        frame = {k: record[k][t] for k in keys}
        frame["action"] = actions[t]
        frame["task"] = task_text
        dataset.add_frame(frame)
    dataset.save_episode()
    return len(actions)


def _remove_empty_dirs(folder: Path) -> None:
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder)


def _clear_build(partial: Path) -> None:
    """Remove what a run killed while building left beside the journal (the build is redone from it)."""
    for child in partial.iterdir():
        if child.name in (_JOURNAL, "_PARTIAL"):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _build_dataset(partial: Path, spec: EnvSpec, episodes: int, repo_id: str,
                   video: bool) -> tuple[dict[str, dict[str, int]], int]:
    """The LeRobot dataset of every journaled episode, in task and episode order, as the partial's content."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _clear_build(partial)
    build = partial / _BUILD
    dataset = LeRobotDataset.create(repo_id=repo_id, fps=spec.fps, features=spec.features, root=build,
                                    robot_type=spec.robot_type, use_videos=video)
    per_task = {task: {"attempted": 0, "kept": 0, "dropped": 0} for task in spec.tasks}
    frames = 0
    for task in spec.tasks:
        for index in range(episodes):
            with np.load(_journal_path(partial, task, index), allow_pickle=False) as record:
                counts = per_task[task]
                counts["attempted"] += 1
                if "action" in record:
                    frames += _write_episode(dataset, record, spec, spec.instructions[task])
                    counts["kept"] += 1
                else:
                    counts["dropped"] += 1
    if not any(c["kept"] for c in per_task.values()):
        raise UserError(f"no episode of {', '.join(spec.tasks)} succeeded; nothing to record "
                        "(raise env.max_episode_steps or lower noise_std)")
    dataset.finalize()
    _remove_empty_dirs(build / "images")  # the image writer's staging folder, emptied into the parquet files
    for child in build.iterdir():
        os.replace(child, partial / child.name)
    build.rmdir()
    shutil.rmtree(partial / _JOURNAL)
    return per_task, frames


def collect_request(env_cfg: Any, episodes: int, repo_id: str = "local/metaworld", seed: int = 0,
                    noise_std: float = 0.0, video: bool = False, keep_failed: bool = False,
                    record_environment_state: bool = False) -> dict[str, Any]:
    """What decides a dataset's content: a rerun with the same request resumes or reuses it."""
    env = OmegaConf.to_container(env_cfg, resolve=True) if OmegaConf.is_config(env_cfg) else dict(env_cfg)
    return {"env": env, "episodes": int(episodes), "repo_id": repo_id, "seed": int(seed),
            "noise_std": float(noise_std), "video": bool(video), "keep_failed": bool(keep_failed),
            "record_environment_state": bool(record_environment_state)}


def collect_dataset(env_cfg: Any, root: str | Path, episodes: int, repo_id: str = "local/metaworld",
                    seed: int = 0, noise_std: float = 0.0, n_envs: int = 1, vector_mode: str = "sync",
                    video: bool = False, keep_failed: bool = False, record_environment_state: bool = False,
                    overwrite: bool = False) -> CollectSummary:
    """Record `episodes` scripted-expert episodes per task of `env_cfg` into a LeRobot dataset at `root`.

    Resumes the journal of an interrupted run of the same request; a complete dataset of the same request is
    reused (unless `overwrite`); a folder at `root` that is not ours is refused.
    """
    root = Path(root)
    if int(episodes) < 1:
        raise UserError(f"episodes={episodes}: nothing to collect; pass episodes=N with N >= 1")
    request = collect_request(env_cfg, episodes, repo_id, seed, noise_std, video, keep_failed,
                              record_environment_state)
    if not overwrite and reusable(root, DATASET_KIND, request):
        log.info("%s already holds this dataset; pass overwrite=true to collect it again", root)
        return CollectSummary(**{**_read_summary(root), "resumed_episodes": 0, "reused": True})
    spec = env_spec(env_cfg, video=video, include_env_state=record_environment_state)
    expert = scripted_expert(str(env_cfg.get("name", "metaworld")), noise_std=noise_std, seed=seed)
    n_envs = max(1, min(int(n_envs), int(episodes)))
    started = time.perf_counter()
    with atomic_directory(root, overwrite=overwrite, kind=DATASET_KIND, request=request, resume=True) as partial:
        done = _finished_episodes(partial, spec.tasks, episodes)
        bar = tqdm(total=episodes * len(spec.tasks), initial=sum(done.values()), desc="collect", unit="ep")
        steps = 0
        with closing(task_episodes(env_cfg, spec.tasks, expert, episodes, n_envs, vector_mode, seed,
                                   spec.max_episode_steps, record=True, progress=bar, starts=done)) as traces:
            for task, trace in traces:
                steps += trace.length
                _journal_episode(_journal_path(partial, task, trace.seed - seed), trace, spec,
                                 keep=trace.success or keep_failed)
        bar.close()
        per_task, frames = _build_dataset(partial, spec, episodes, repo_id, video)
        wall = time.perf_counter() - started
        summary = CollectSummary(root=str(root), tasks=list(spec.tasks),
                                 attempted=sum(c["attempted"] for c in per_task.values()),
                                 kept=sum(c["kept"] for c in per_task.values()),
                                 dropped=sum(c["dropped"] for c in per_task.values()), frames=frames,
                                 wall_s=wall, frames_per_s=frames / wall, env_steps_per_s=steps / wall,
                                 per_task=per_task, resumed_episodes=sum(done.values()))
        write_json(partial / "collect.json", asdict(summary))
    return summary


def _read_summary(root: Path) -> dict[str, Any]:
    import json

    return json.loads((root / "collect.json").read_text())


def run(cfg: DictConfig) -> CollectSummary:
    """Entry point of `vst-vla collect` (config: configs/collect.yaml)."""
    if int(cfg.episodes) < 1:
        raise UserError(f"episodes={cfg.episodes}: collect records at least one episode per task; pass episodes=N "
                        "with N >= 1")
    quiet_torchcodec(video_in_use=False)  # recording encodes videos with PyAV; torchcodec only decodes
    out = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir() / "dataset"
    summary = collect_dataset(cfg.env, out, episodes=int(cfg.episodes), repo_id=str(cfg.repo_id),
                              seed=int(cfg.seed), noise_std=float(cfg.noise_std), n_envs=int(cfg.n_envs),
                              vector_mode=str(cfg.vector), video=bool(cfg.video), keep_failed=bool(cfg.keep_failed),
                              record_environment_state=bool(cfg.record_environment_state),
                              overwrite=bool(cfg.overwrite))
    log.info("collect config:\n%s", OmegaConf.to_yaml(cfg))
    print(summary.line())
    return summary
