"""`vst-vla eval-sim`: roll a policy out in MetaWorld and write eval.json, eval.md and mp4 videos.

    vst-vla eval-sim policy=expert task=pick-place episodes=50 n_envs=2 vector=async
    vst-vla eval-sim policy=vst_vla policy.path=DIR task=pick-place

The policy is `hydra.utils.instantiate(cfg.policy)` (see `sim.rollout` for the contract).
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from sim.eval_report import EvalResult
from sim.rollout import evaluate
from vst_vla.hydra_run import resolve_out

log = logging.getLogger(__name__)


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


def run(cfg: DictConfig) -> EvalResult:
    """Entry point of `vst-vla eval-sim` (config: configs/eval-sim.yaml)."""
    out = resolve_out(cfg, "output_dir")
    policy = instantiate(cfg.policy, _convert_="all")
    result = evaluate(policy, cfg.env, n_episodes=int(cfg.episodes), n_envs=int(cfg.n_envs),
                      vector_mode=str(cfg.vector), seed=int(cfg.seed), video_dir=out / "videos",
                      n_videos=int(cfg.n_videos), policy_name=policy_name(cfg, policy))
    result.write(out)
    print(result.summary_line())
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}")
    return result
