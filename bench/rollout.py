"""Env steps per second of the vectorised rollout evaluator against one env stepped in a loop.

    python bench/rollout.py [--task pick-place] [--n-envs 2] [--vector async] [--image-size 64] [--steps 200]

Both sides run the same policy (uniform random actions, so every episode lasts `--steps` and no sub-env
idles), the same image size and camera, and the same observation -> LeRobot batch -> action path; only the
env side differs: `sim.rollout.rollout_batch` over an N-env gymnasium vector env against a single
`MetaWorldEnv` stepped in a Python loop. Env construction and worker start-up are excluded (warm-up
episode). The machine is shared, so the two are measured in short alternating runs and the fastest run of
each counts (the run least disturbed by other load, timeit's advice); the median is printed too.
Target: >= 1.6x on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np
import torch
from omegaconf import OmegaConf

from sim.env_spec import make_vector_env
from sim.experts import RandomPolicy
from sim.metaworld_env import ACTION_DIM, MetaWorldEnv, env_kwargs
from sim.policy_io import actions_to_numpy, observation_to_batch
from sim.rollout import rollout_batch


def single_env_steps_per_s(env: MetaWorldEnv, policy: RandomPolicy, steps: int, seed: int) -> float:
    """Steps/s of one env in a plain loop through the same batch conversion as the evaluator."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.inference_mode():
            action = actions_to_numpy(policy.select_action(observation_to_batch(obs, env.task_description)), 1, ACTION_DIM)
        obs, _, terminated, truncated, _ = env.step(action[0])
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def vector_steps_per_s(vec_env, policy: RandomPolicy, steps: int, seed: int) -> float:
    """Env steps/s (summed over sub-envs) of one evaluator batch of `steps`-step episodes."""
    start = time.perf_counter()
    traces = rollout_batch(vec_env, policy, [seed + i for i in range(vec_env.num_envs)], steps)
    return sum(t.length for t in traces) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pick-place")
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--vector", default="async", choices=["sync", "async"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    env_cfg = OmegaConf.create({"name": "metaworld", "task": args.task, "cameras": ["corner2"],
                                "image_size": args.image_size, "max_episode_steps": args.steps})
    policy = RandomPolicy(seed=0)
    single = MetaWorldEnv(args.task, **env_kwargs(env_cfg))
    vec_env = make_vector_env(env_cfg, args.task, args.n_envs, args.vector)
    try:
        single_env_steps_per_s(single, policy, 20, seed=0)  # warm-up: build the sim and the GL context
        rollout_batch(vec_env, policy, list(range(args.n_envs)), 5)  # warm-up: start workers, build sims
        singles, vectors = [], []
        for r in range(args.repeats):
            singles.append(single_env_steps_per_s(single, policy, args.steps, seed=r))
            vectors.append(vector_steps_per_s(vec_env, policy, args.steps, seed=r))
    finally:
        vec_env.close()
        single.close()
    best_single, best_vector = max(singles), max(vectors)
    median_ratio = float(np.median(vectors)) / float(np.median(singles))
    print(f"task={args.task} image={args.image_size}px policy=random steps/episode={args.steps} "
          f"repeats={args.repeats} cpus={os.cpu_count()}")
    print(f"one env in a loop:        {best_single:7.1f} env steps/s  (runs: {', '.join(f'{s:.1f}' for s in singles)})")
    print(f"{args.vector} vector, {args.n_envs} envs:   {best_vector:7.1f} env steps/s  "
          f"(runs: {', '.join(f'{s:.1f}' for s in vectors)})")
    ratio = best_vector / best_single
    print(f"ratio vectorised/single: {ratio:.2f}x (target >= 1.6x): {'PASS' if ratio >= 1.6 else 'FAIL'}; "
          f"ratio of medians {median_ratio:.2f}x")


if __name__ == "__main__":
    main()
