"""`vst-vla eval-sim`: roll a policy out in MetaWorld and write eval.json, eval.md and mp4 videos.

    vst-vla eval-sim policy=expert task=pick-place episodes=50 n_envs=2 vector=async
    vst-vla eval-sim policy=vst_vla policy.path=DIR task=pick-place

The policy is `hydra.utils.instantiate(cfg.policy)` (see `sim.rollout` for the contract). With
`inference_delay_steps=d` (an integer, 0 included) a chunk policy runs under d control steps of simulated
inference latency in its execution mode (`sim.latency.DelayedChunkPolicy`). Finished episodes
are journaled in `<output_dir>/.eval.partial/` until eval.json is written, so a rerun of an interrupted
evaluation with the same settings keeps them and gives the same results.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sim.eval_report import EvalResult
from sim.latency import DelayedChunkPolicy
from sim.rollout import evaluate
from vst_vla.atomic import read_manifest, resumable_partial
from vst_vla.hydra_run import resolve_out

log = logging.getLogger(__name__)

EVAL_KIND = "eval-sim"


def policy_name(cfg: DictConfig, policy: object) -> str:
    """A readable name for reports: the `policy=` choice under Hydra (e.g. `expert`), else the class name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get("policy")
        if choice:
            return str(choice)
    except ValueError:  # not under Hydra (a test composing the config)
        pass
    return type(policy).__name__


def latency_setting(cfg: DictConfig, policy: object) -> dict[str, Any] | None:
    """The simulated latency of this evaluation (None: the policy's own `select_action`, no latency)."""
    if not isinstance(policy, DelayedChunkPolicy):
        return None
    return {"inference_delay_steps": policy.delay, "execution_mode": policy.mode, "chunk_size": policy.chunk_size,
            "n_action_steps": policy.n_action_steps}


def eval_request(cfg: DictConfig, latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides the episodes' results: an interrupted run of the same request keeps its finished episodes.

    A policy loaded from a directory is identified by its `_COMPLETE` manifest's id too, so a retrained
    policy at the same path starts afresh."""
    policy = OmegaConf.to_container(cfg.policy, resolve=True)
    path = policy.get("path") if isinstance(policy, dict) else None
    manifest = read_manifest(path) if path and Path(str(path)).is_dir() else None
    return {"policy": policy, "policy_id": (manifest or {}).get("id"),
            "env": OmegaConf.to_container(cfg.env, resolve=True), "episodes": int(cfg.episodes),
            "n_envs": int(cfg.n_envs), "vector": str(cfg.vector), "seed": int(cfg.seed),
            "n_videos": int(cfg.n_videos), "latency": latency}


def run(cfg: DictConfig) -> EvalResult:
    """Entry point of `vst-vla eval-sim` (config: configs/eval-sim.yaml)."""
    out = resolve_out(cfg, "output_dir")
    policy = instantiate(cfg.policy, _convert_="all")
    name = policy_name(cfg, policy)
    delay = cfg.get("inference_delay_steps")
    if delay is not None:
        policy = DelayedChunkPolicy(policy, int(delay))
    latency = latency_setting(cfg, policy)
    with resumable_partial(out / "eval", EVAL_KIND, eval_request(cfg, latency)) as journal:
        result = evaluate(policy, cfg.env, n_episodes=int(cfg.episodes), n_envs=int(cfg.n_envs),
                          vector_mode=str(cfg.vector), seed=int(cfg.seed), video_dir=out / "videos",
                          n_videos=int(cfg.n_videos), policy_name=name, journal=journal,
                          meta={"latency": latency} if latency else None)
        result.write(out)
        shutil.rmtree(journal)
    print(result.summary_line())
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}")
    return result
