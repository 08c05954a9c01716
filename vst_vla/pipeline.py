"""`vst-vla pipeline`: the whole VST-VLA chain in one output folder, resumable, with a report.

synth -> sft -> rl -> eval-spatial; collect -> vla (on the RL-tuned backbone) and vla_control (on the untuned
backbone: the paper's claim in miniature) -> eval-sim of both -> export -> report.

Each stage is the same `vst-vla <command>` a user would run, launched as a child process with its inputs
wired from the previous stages' artifacts. A stage is done when its `_STAGE_DONE.json` exists (written
atomically after the command exits 0 and its artifact is in place), so a rerun skips finished stages and
re-enters an interrupted one with the same command line: `sft`, `rl` and `vla` resume from their last complete
checkpoint there by default (`resume=auto`), so the pipeline passes no resume flag.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vst_vla.atomic import write_json
from vst_vla.errors import EXIT_USER_ERROR, UserError
from vst_vla.hydra_run import resolve_out

log = logging.getLogger(__name__)

DONE_MARKER = "_STAGE_DONE.json"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the `vst-vla` command it runs, how its inputs are wired, and its artifact."""

    name: str
    command: str
    wiring: Callable[[Layout], list[str]]
    artifact: str  # path relative to the stage folder whose presence means the command finished its work
    base: str = ""  # the name in `stages:` and `stage_overrides` (a seeded copy shares its base's); "" = name

    @property
    def key(self) -> str:
        return self.base or self.name


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, under the pipeline's root folder."""

    root: Path
    untuned_source: str  # the backbone the pipeline starts from (`model.source`)

    def stage(self, name: str) -> Path:
        return self.root / name


def _model_overrides(source: str | Path) -> list[str]:
    return [f"model.source={source}"]


STAGES: list[Stage] = [
    Stage("synth", "synth", lambda L: [], "summary.json"),
    Stage("sft", "sft", lambda L: [
        f"data.train=[{L.stage('synth') / 'vst_p' / 'train.parquet'},{L.stage('synth') / 'vst_r' / 'train.parquet'}]",
        f"data.eval=[{L.stage('synth') / 'vst_p' / 'test.parquet'}]",
    ], "checkpoint-final"),
    Stage("rl", "rl", lambda L: [
        *_model_overrides(L.stage("sft") / "checkpoint-final"),
        f"data.paths=[{L.stage('synth') / 'vst_r' / 'train.parquet'}]",
    ], "checkpoint-final"),
    Stage("eval_spatial", "eval-spatial", lambda L: [
        f"data.paths=[{L.stage('synth') / 'vst_p' / 'test.parquet'},{L.stage('synth') / 'vst_r' / 'test.parquet'}]",
        (f"checkpoints={{untuned: {L.untuned_source}, sft: {L.stage('sft') / 'checkpoint-final'}, "
         f"rl: {L.stage('rl') / 'checkpoint-final'}}}"),
    ], "metrics.json"),
    Stage("collect", "collect", lambda L: [], "meta/info.json"),
    Stage("vla", "vla", lambda L: [
        *_model_overrides(L.stage("rl") / "checkpoint-final"), f"dataset_root={L.stage('collect')}",
    ], "policy"),
    Stage("vla_control", "vla", lambda L: [
        *_model_overrides(L.untuned_source), f"dataset_root={L.stage('collect')}",
    ], "policy"),
    Stage("eval_sim", "eval-sim", lambda L: ["policy=vst_vla", f"policy.path={L.stage('vla') / 'policy'}"],
          "eval.json"),
    Stage("eval_sim_control", "eval-sim", lambda L: [
        "policy=vst_vla", f"policy.path={L.stage('vla_control') / 'policy'}"], "eval.json"),
    Stage("export", "export", lambda L: [
        f"policy_path={L.stage('vla') / 'policy'}", f"card.eval_results={L.stage('eval_sim') / 'eval.json'}",
        f"card.training_data='scripted-expert demonstrations recorded by vst-vla collect into {L.stage('collect')}'",
    ], "bundle"),
]
STAGE_NAMES = [s.name for s in STAGES]
# With `vla_seeds`, each of these becomes one stage per training seed (`vla_s0`, `eval_sim_control_s2`, ...).
SEEDED_STAGES = ("vla", "vla_control", "eval_sim", "eval_sim_control")


def seeded_name(base: str, seed: int) -> str:
    return f"{base}_s{seed}"


def _seeded_stage(stage: Stage, seed: int) -> Stage:
    """`stage` for one training seed: the VLA trains with `train.seed=seed`; its evaluation reads that policy."""
    name = seeded_name(stage.name, seed)
    if stage.command == "vla":
        def wiring(L: Layout, base=stage.wiring) -> list[str]:
            return [*base(L), f"train.seed={seed}"]
    else:
        policy_stage = seeded_name("vla" if stage.name == "eval_sim" else "vla_control", seed)

        def wiring(L: Layout) -> list[str]:
            return ["policy=vst_vla", f"policy.path={L.stage(policy_stage) / 'policy'}"]
    return Stage(name, stage.command, wiring, stage.artifact, base=stage.name)


def _seeded_export(seed: int) -> Stage:
    def wiring(L: Layout) -> list[str]:
        return [f"policy_path={L.stage(seeded_name('vla', seed)) / 'policy'}",
                f"card.eval_results={L.stage(seeded_name('eval_sim', seed)) / 'eval.json'}",
                ("card.training_data='scripted-expert demonstrations recorded by vst-vla collect into "
                 f"{L.stage('collect')}'")]
    return Stage("export", "export", wiring, "bundle")


def pipeline_stages(cfg: DictConfig) -> list[Stage]:
    """The stages of this run: `STAGES`, with the VLA arms and their evaluations repeated per `vla_seeds` seed
    (evaluated on the same episode seeds, so the arms are compared on the same placements); export packages the
    tuned policy of the first seed."""
    seeds = [int(s) for s in (OmegaConf.select(cfg, "vla_seeds", default=None) or [])]
    if not seeds:
        return list(STAGES)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"pipeline.vla_seeds: {seeds} repeats a seed; list each training seed once")
    expanded: list[Stage] = []
    for stage in STAGES:
        if stage.name in SEEDED_STAGES:
            expanded += [_seeded_stage(stage, seed) for seed in seeds]
        elif stage.name == "export":
            expanded.append(_seeded_export(seeds[0]))
        else:
            expanded.append(stage)
    return expanded


def is_done(stage_dir: Path) -> bool:
    return (stage_dir / DONE_MARKER).is_file()


def stage_argv(stage: Stage, layout: Layout, cfg: DictConfig) -> list[str]:
    """The child process's command line: wiring from earlier artifacts, then the config's per-stage overrides."""
    stage_dir = layout.stage(stage.name)
    extra = list(OmegaConf.select(cfg, f"stage_overrides.{stage.key}", default=None) or [])
    common = [*forwarded_choices(cfg), *list(cfg.common_overrides or [])]
    return [sys.executable, "-m", "vst_vla.cli", stage.command, *common,
            f"hydra.run.dir={layout.root / 'logs' / stage.name}", f"output_dir={stage_dir}",
            *stage.wiring(layout), *extra]


def forwarded_choices(cfg: DictConfig) -> list[str]:
    """The pipeline's own group choices (model, trainer, experiment) and model source, passed to every stage."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except ValueError:  # called outside Hydra (tests): forward nothing but the model source
        choices = {}
    forwarded = [f"{group}={choices[group]}" for group in ("model", "trainer", "experiment")
                 if choices.get(group) not in (None, "null")]
    return [*forwarded, f"model.source={cfg.model.source}"]


def run_stage(stage: Stage, layout: Layout, cfg: DictConfig) -> dict:
    """Run one stage to completion (or raise), returning its timing record."""
    stage_dir = layout.stage(stage.name)
    argv = stage_argv(stage, layout, cfg)
    log.info("stage %s: %s", stage.name, " ".join(argv[2:]))
    started = time.perf_counter()
    log_file = layout.root / "logs" / f"{stage.name}.out"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env())
        assert proc.stdout is not None
        for line in proc.stdout:  # tee: the child's progress bars stay visible, and are kept in the log
            sink.write(line)
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        code = proc.wait()
    seconds = time.perf_counter() - started
    if code != 0:  # the stage's own one-line error is the last line of its log; exit 2 stays a user error
        failure = UserError if code == EXIT_USER_ERROR else RuntimeError
        raise failure(f"pipeline stage {stage.name!r} failed (exit {code}); its log: {log_file}")
    if not (stage_dir / stage.artifact).exists():
        raise RuntimeError(f"pipeline stage {stage.name!r} exited 0 but wrote no {stage_dir / stage.artifact}")
    record = {"stage": stage.name, "command": stage.command, "seconds": round(seconds, 1), "argv": argv[2:]}
    write_json(stage_dir / DONE_MARKER, record)
    return record


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def selected_stages(cfg: DictConfig) -> list[Stage]:
    names = list(cfg.stages)
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"pipeline.stages: unknown stage(s) {unknown}; known: {STAGE_NAMES}")
    return [s for s in pipeline_stages(cfg) if s.key in names]


def run(cfg: DictConfig) -> dict:
    """Entry point of `vst-vla pipeline`."""
    root = resolve_out(cfg)
    layout = Layout(root=root, untuned_source=str(cfg.model.source))
    timings: dict[str, dict] = {}
    started = time.perf_counter()
    for stage in selected_stages(cfg):
        stage_dir = layout.stage(stage.name)
        if is_done(stage_dir):
            timings[stage.name] = dict(json.loads((stage_dir / DONE_MARKER).read_text()), skipped=True)
            log.info("stage %s: done already, skipped", stage.name)
            continue
        timings[stage.name] = run_stage(stage, layout, cfg)
    summary = {"root": str(root), "wall_seconds": round(time.perf_counter() - started, 1), "stages": timings,
               "peak_rss_mb": _peak_rss_mb(),
               "backbone": {key: str(cfg.model.get(key)) for key in ("name", "family", "source")}}
    write_json(root / "pipeline.json", summary)
    if cfg.report:
        from vst_vla.report import write_report

        report = write_report(root, summary)
        print(f"report: {report}")
    return summary


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and of its largest child (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)
