"""`vst-vla synth`: VST-P / VST-R parquet files generated from procedural MuJoCo scenes.

Each scene is rendered once per camera; every skill then asks its questions about those renders. Scenes are
numbered per split and seeded by (seed, split, index), so train and test never share a scene and the same
seed gives the same bytes whatever `num_workers` is (workers render, the main process assembles in order).

Layout of `output_dir`: `vst_p/{train,test}.parquet` (perception rows), `vst_r/{train,test}.parquet`
(`<think>` rows, type containing "thought"), `summary.json`, `summary.md`, optionally `preview.html`.
It is written as an atomic artifact (see `vst_vla.atomic`): a folder that is not ours is refused, a rerun with
the same settings reuses a complete output and resumes an interrupted one from its scene journal
(`spatial_tuning.synth_journal`), giving the bytes of an uninterrupted run.

MuJoCo fixes its GL backend when it is first imported, so this module imports the scene and skill modules
(which import MuJoCo) only inside functions, after `run` has chosen the renderer.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from spatial_tuning.sample import SpatialSample
from spatial_tuning.synth_journal import SceneJournal
from spatial_tuning.vst_format import write_parquet
from vst_vla.atomic import atomic_directory, reusable, write_json, write_text

if TYPE_CHECKING:
    from spatial_tuning.skills import Draft

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "test": 1}


@dataclass(frozen=True)
class SceneJob:
    """What a worker needs to render one scene and draft its questions."""

    seed: int
    split: str
    index: int
    image_size: int
    skills: tuple[str, ...]
    questions_per_scene: int
    objects: tuple[int, int]
    views: int
    video_frames: int
    shadows: bool
    manipulation_tasks: tuple[str, ...] = ()  # MetaWorld tasks the manipulation skills pose scenes from

    @property
    def scene_id(self) -> str:
        return f"{self.split}_{self.seed}_{self.index:05d}"


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def draft_scene(job: SceneJob) -> tuple[SceneJob, list[Draft], dict[str, bytes], dict[str, dict]]:
    """Render one scene and draft up to `questions_per_scene` distinct questions per skill: the procedural scene
    for procedural skills, a MetaWorld manipulation state (task chosen by the scene index) for manipulation ones."""
    from spatial_tuning.skills.registry import SCENES_OF

    procedural = tuple(n for n in job.skills if SCENES_OF[n] == "procedural")
    manipulation = tuple(n for n in job.skills if SCENES_OF[n] == "metaworld")
    drafts: list[Draft] = []
    views = {}
    if procedural:
        ctx = _procedural_context(job, procedural)
        drafts += _draft_questions(job, procedural, ctx)
        views.update(ctx.views)
    if manipulation and job.manipulation_tasks:
        ctx = _manipulation_context(job)
        drafts += _draft_questions(job, manipulation, ctx)
        views.update(ctx.views)
    images = {name: encode_png(view.rgb) for name, view in views.items()}
    cameras = {name: view.camera.to_dict() for name, view in views.items()}
    return job, drafts, images, cameras


def _procedural_context(job: SceneJob, skills: tuple[str, ...]):
    from sim.procedural_scene import generate_scene
    from spatial_tuning.skills.base import render_context, scenario_cameras
    from spatial_tuning.skills.registry import SCENARIO_OF

    scene = generate_scene(np.random.default_rng([job.seed, SPLIT_CODES[job.split], job.index]), job.scene_id,
                           job.image_size, job.objects, job.views, job.video_frames)
    # Only the cameras the job's skills look through are rendered (late scenes serve the few skills left).
    return render_context(scene, job.shadows, scenario_cameras(scene, {SCENARIO_OF[n] for n in skills}))


def _manipulation_context(job: SceneJob):
    from sim.manipulation_scene import MANIPULATION_OBJECTS, pose_state
    from spatial_tuning.skills.manipulation import MIN_OBJECTS, render_manipulation_context

    # Late scenes serve only the skills still short: when all of them need several objects, pose only tasks
    # that have that many (the choice depends on the job's skills alone, so the output stays deterministic).
    need = min((MIN_OBJECTS[n] for n in job.skills if n in MIN_OBJECTS), default=1)
    tasks = [t for t in job.manipulation_tasks if len(MANIPULATION_OBJECTS[t]) >= need] or job.manipulation_tasks
    task = tasks[job.index % len(tasks)]
    # Evaluation episodes of MetaWorld seed from 1000 (eval-sim) and demonstrations from 0 (collect): the
    # spatial data uses its own seed range per split, so no question shows an evaluation placement.
    task_seed = 100_000 + 50_000 * SPLIT_CODES[job.split] + job.index
    state = pose_state(task, task_seed, np.random.default_rng([job.seed, SPLIT_CODES[job.split], job.index, 11]),
                       job.image_size)
    try:
        return render_manipulation_context(state, job.image_size)
    finally:
        state.close()


def _draft_questions(job: SceneJob, skills: tuple[str, ...], ctx) -> list[Draft]:
    from spatial_tuning.skills import SKILLS

    drafts: list[Draft] = []
    for name in skills:
        # One rng per (scene, skill): which other skills run never changes this skill's questions.
        rng = np.random.default_rng([job.seed, SPLIT_CODES[job.split], job.index, zlib.crc32(name.encode())])
        seen: set[tuple] = set()
        for _ in range(4 * job.questions_per_scene):
            draft = SKILLS[name](ctx, rng)
            key = None if draft is None else (draft.question, tuple(draft.cameras), draft.options and draft.options[0])
            if draft is not None and key not in seen:
                seen.add(key)
                drafts.append(draft)
            if len(seen) >= job.questions_per_scene:
                break
    return drafts


class LetterBalancer:
    """Places each multiple-choice answer on the letter its skill has used least (ties broken by the rng),
    so every skill's answers are balanced over letters."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.counts = rng, {}

    def position(self, skill: str, n_options: int) -> int:
        counts = self.counts.setdefault(skill, Counter())
        least = min(counts[i] for i in range(n_options))
        choices = [i for i in range(n_options) if counts[i] == least]
        chosen = int(choices[int(self.rng.integers(len(choices)))])
        counts[chosen] += 1
        return chosen


def is_thought(k: int, fraction: float) -> bool:
    """Whether a skill's k-th sample is a `<think>` sample: exactly `fraction` of them, spread evenly."""
    return math.floor((k + 1) * fraction) > math.floor(k * fraction)


def _renders_in_process() -> bool:
    """Whether MuJoCo in this process was imported with the selected GL backend (`MUJOCO_GL`)."""
    if "mujoco" not in sys.modules:
        return True
    from mujoco.rendering.classic import gl_context

    context = getattr(gl_context, "GLContext", None)
    return context is not None and os.environ.get("MUJOCO_GL", "glfw") in context.__module__


def _scene_results(jobs: Iterator[SceneJob], num_workers: int) -> Iterator[tuple]:
    if num_workers <= 1 and _renders_in_process():
        yield from map(draft_scene, jobs)
        return
    # spawn: each worker opens its own GL context; forking one that has touched GL is unsafe.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        yield from pool.imap(draft_scene, jobs, chunksize=1)  # in order: the output does not depend on timing


def manipulation_tasks(cfg: DictConfig) -> tuple[str, ...]:
    """The MetaWorld tasks of `scenes.manipulation_tasks` (canonical names; default: every task that
    `sim.manipulation_scene.MANIPULATION_OBJECTS` describes)."""
    from sim.manipulation_scene import MANIPULATION_OBJECTS
    from sim.tasks import canonical_task

    names = OmegaConf.select(cfg, "scenes.manipulation_tasks", default=None)
    if names is None:
        return tuple(MANIPULATION_OBJECTS)
    tasks = tuple(canonical_task(str(n)) for n in names)
    unknown = [t for t in tasks if t not in MANIPULATION_OBJECTS]
    if unknown:
        raise ValueError(f"synth scenes.manipulation_tasks: {unknown} have no object table; choose from "
                         f"{sorted(MANIPULATION_OBJECTS)} (sim/manipulation_scene.py)")
    return tasks


def generate_split(split: str, count_per_skill: int, cfg: DictConfig,
                   journal: Path | None = None) -> tuple[list[SpatialSample], dict]:
    """`count_per_skill` samples of every selected skill from fresh scenes of `split`.

    With a `journal` folder, each finished scene is recorded there and the scenes an interrupted run
    finished are replayed instead of rendered (see `spatial_tuning.synth_journal`)."""
    from spatial_tuning.skills import finalize, select_skills

    skills = tuple(select_skills(OmegaConf.to_container(cfg.skills) if OmegaConf.is_config(cfg.skills) else cfg.skills))
    accepted: dict[str, list[SpatialSample]] = {name: [] for name in skills}
    rng = np.random.default_rng([int(cfg.seed), SPLIT_CODES[split], 7])
    balancer = LetterBalancer(rng)
    max_scenes = int(cfg.scenes.max_scenes or max(50, 20 * count_per_skill))
    scene_journal = SceneJournal(journal)
    first_scene = scene_journal.replay(accepted, rng, balancer.counts)
    if first_scene:
        log.info("synth %s: resuming after %d finished scenes (%d samples kept)", split, first_scene,
                 sum(len(v) for v in accepted.values()))

    def jobs() -> Iterator[SceneJob]:
        # A job names the skills still short when it is created. Skills only ever fill up, so a skill left
        # out is one that no later scene could serve; the output is the same however far workers run ahead.
        for i in range(first_scene, max_scenes):
            active = tuple(n for n in skills if len(accepted[n]) < count_per_skill)
            if not active:
                return
            yield SceneJob(int(cfg.seed), split, i, int(cfg.image_size), active, int(cfg.questions_per_scene),
                           tuple(cfg.scenes.objects), int(cfg.scenes.views), int(cfg.scenes.video_frames),
                           bool(cfg.shadows), manipulation_tasks(cfg))

    total, scenes = count_per_skill * len(skills), first_scene
    restored = sum(len(v) for v in accepted.values())
    finished = all(len(v) >= count_per_skill for v in accepted.values())
    with tqdm(total=total, initial=restored, desc=f"synth {split}", unit="sample", disable=total == 0) as bar:
        for job, drafts, images, cameras in _scene_results(jobs(), int(cfg.num_workers)) if not finished else ():
            scenes += 1
            added = []
            for draft in drafts:
                done = accepted[draft.skill]
                if len(done) >= count_per_skill:
                    continue
                k = len(done)
                position = balancer.position(draft.skill, len(draft.options)) if draft.options else 0
                done.append(finalize(draft, sample_id=f"{job.scene_id}_{draft.skill}_{k:05d}", scene_id=job.scene_id,
                                     images=[images[c] for c in draft.cameras], thought=is_thought(k, cfg.thought_fraction),
                                     correct_position=position, rng=rng, camera_info=[cameras[c] for c in draft.cameras]))
                added.append(done[-1])
                bar.update(1)
            scene_journal.record(job.index, added, rng, balancer.counts)
            if all(len(v) >= count_per_skill for v in accepted.values()):
                break
    short = {name: len(v) for name, v in accepted.items() if len(v) < count_per_skill}
    if short:
        log.warning("synth %s: after %d scenes some skills are short of %d samples: %s", split, scenes,
                    count_per_skill, short)
    samples = [s for name in skills for s in accepted[name]]
    return samples, {"scenes": scenes, "samples": len(samples)}


def summarize(splits: dict[str, list[SpatialSample]]) -> dict[str, Any]:
    """Counts per skill and split, thought counts, and the answer-letter balance of multiple-choice skills."""
    from spatial_tuning.skills.registry import SCENARIO_OF

    skills: dict[str, dict[str, Any]] = {}
    for split, samples in splits.items():
        for s in samples:
            entry = skills.setdefault(s.skill, {"scenario": SCENARIO_OF.get(s.skill, ""), "mode": s.meta_info["mode"],
                                                "train": 0, "test": 0, "thought": 0, "letters": Counter()})
            entry[split] += 1
            entry["thought"] += int(s.think)
            if s.meta_info["mode"] == "multiple_choice":
                entry["letters"][s.meta_info["answer"]] += 1
    for entry in skills.values():
        letters = entry.pop("letters")
        n = sum(letters.values())
        entry["letter_share"] = {k: round(letters[k] / n, 3) for k in sorted(letters)} if n else {}
        entry["max_letter_share"] = max(entry["letter_share"].values()) if n else None
    return skills


def summary_markdown(summary: dict[str, Any]) -> str:
    """The per-skill table of `summary.md`."""
    lines = ["| skill | scenario | mode | train | test | thought | answer letters |", "|---|---|---|---|---|---|---|"]
    for name, e in summary["skills"].items():
        letters = " ".join(f"{k}:{v:.0%}" for k, v in e["letter_share"].items()) or "-"
        lines.append(f"| {name} | {e['scenario']} | {e['mode']} | {e['train']} | {e['test']} | {e['thought']} | {letters} |")
    totals = summary["totals"]
    lines.append(f"| **total** | | | {totals['train']} | {totals['test']} | {totals['thought']} | |")
    t = summary["throughput"]
    rate = (f"{totals['train'] + totals['test']} samples from {t['scenes']} scenes in {t['seconds']:.1f} s: "
            f"{t['samples_per_s']:.1f} samples/s, {t['scenes_per_s']:.2f} scenes/s at {summary['image_size']} px "
            f"with {summary['num_workers']} worker(s).")
    lines += ["", rate]
    return "\n".join(lines) + "\n"


def _write_outputs(tmp: Path, splits: dict[str, list[SpatialSample]]) -> None:
    for split, samples in splits.items():
        write_parquet([s for s in samples if not s.think], tmp / "vst_p" / f"{split}.parquet")
        write_parquet([s for s in samples if s.think], tmp / "vst_r" / f"{split}.parquet")


SYNTH_KIND = "vst-synth-data"
_JOURNAL = "scenes"


def synth_request(cfg: DictConfig) -> dict[str, Any]:
    """The settings that decide synth's bytes: a rerun with the same ones resumes or reuses the output."""
    keys = ("seed", "image_size", "counts_per_skill", "skills", "thought_fraction", "questions_per_scene", "scenes",
            "shadows")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}


def _clear_outputs(partial: Path) -> None:
    """Remove output files a run killed while writing them left (they are rewritten from the journal)."""
    for child in partial.iterdir():
        if child.name not in (_JOURNAL, "_PARTIAL"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def synthesize(cfg: DictConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Generate both splits into `out` (atomically; resuming an interrupted run of the same settings) and
    return the summary."""
    started = time.perf_counter()
    splits, stats = {}, {}
    with atomic_directory(out, overwrite=overwrite, kind=SYNTH_KIND, request=synth_request(cfg), resume=True) as tmp:
        for split in ("train", "test"):
            splits[split], stats[split] = generate_split(split, int(cfg.counts_per_skill[split]), cfg,
                                                         journal=tmp / _JOURNAL / split)
        seconds = time.perf_counter() - started
        skills = summarize(splits)
        n = sum(len(v) for v in splits.values())
        scenes = sum(s["scenes"] for s in stats.values())
        summary = {"seed": int(cfg.seed), "image_size": int(cfg.image_size), "num_workers": int(cfg.num_workers),
                   "skills": skills, "splits": stats,
                   "totals": {"train": len(splits["train"]), "test": len(splits["test"]),
                              "thought": sum(e["thought"] for e in skills.values()), "skills": len(skills)},
                   "throughput": {"seconds": round(seconds, 2), "scenes": scenes,
                                  "samples_per_s": round(n / seconds, 2), "scenes_per_s": round(scenes / seconds, 3)}}
        _clear_outputs(tmp)
        _write_outputs(tmp, splits)
        # Timing varies run to run, so it stays out of the files that must be byte-identical per seed.
        write_json(tmp / "summary.json", {k: v for k, v in summary.items() if k not in {"throughput", "num_workers"}})
        write_json(tmp / "throughput.json", summary["throughput"])
        write_text(tmp / "summary.md", summary_markdown(summary))
        if cfg.preview:
            from spatial_tuning.preview import write_preview

            write_preview(splits["test"] or splits["train"], tmp / "preview.html", int(cfg.preview_per_skill))
        shutil.rmtree(tmp / _JOURNAL)
    return summary


def output_path(cfg: DictConfig) -> Path:
    """`cfg.output_dir`, else `data/` inside the Hydra run directory."""
    from vst_vla.hydra_run import run_dir  # imports torch: kept out of the rendering workers' imports

    return Path(cfg.output_dir) if cfg.get("output_dir") else run_dir() / "data"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Entry point of `vst-vla synth`."""
    out = output_path(cfg)
    if not cfg.overwrite and reusable(out, SYNTH_KIND, synth_request(cfg)):
        log.info("synth: %s already holds data of these settings; pass overwrite=true to regenerate", out)
        print(f"synth: {out} already complete with these settings, reusing it (overwrite=true regenerates)")
        return {"output_dir": str(out), "reused": True}
    from vst_vla.runtime import select_mujoco_renderer

    log.info("synth: rendering with MUJOCO_GL=%s", select_mujoco_renderer())  # workers inherit the choice
    summary = synthesize(cfg, out, overwrite=bool(cfg.overwrite))
    print(summary_markdown(summary), end="")
    print(f"synth: wrote {out}")
    return {"output_dir": str(out), **summary}
