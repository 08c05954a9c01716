"""Where a LIBERO step's time goes: physics + OSC control (robosuite runs 25 MuJoCo substeps and its Python
controller per 20 Hz step) against offscreen rendering of the two cameras, at a few image sizes.

    python bench/libero_step.py [--task libero_spatial/0] [--sizes 32 128 256] [--steps 30]

For each size the same env is stepped with zero-motion actions (the gripper held open) with both cameras
enabled (with and without shadows), then with robosuite's camera observables disabled (physics, controller and the proprioceptive
observables only); the difference is rendering. The machine is shared, so each measurement is the fastest
of three short runs. Needs the `libero` extra.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


from sim.libero_env import LiberoEnv
from sim.libero_protocol import NOOP_ACTION


def seconds_per_step(env: LiberoEnv, steps: int, repeats: int = 3) -> float:
    """The fastest of `repeats` runs of `steps` raw robosuite steps, in seconds per step."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            env.raw_env.step(NOOP_ACTION)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def set_cameras(env: LiberoEnv, enabled: bool) -> None:
    """Switch robosuite's image observables (and so the offscreen renders) on or off."""
    inner = env.raw_env.env
    for camera in env.cameras:
        inner.modify_observable(f"{camera}_image", "enabled", enabled)
        inner.modify_observable(f"{camera}_image", "active", enabled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="libero_spatial/0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"{'px':>5} {'shadows':>8} {'full s/step':>12} {'physics s/step':>15} {'render share':>13} {'steps/s':>8}")
    for size, shadows in [(size, shadows) for size in args.sizes for shadows in (True, False)]:
        env = LiberoEnv(args.task, image_size=size, shadows=shadows, hard_reset=False)
        start = time.perf_counter()
        env.reset(seed=1000)
        reset_s = time.perf_counter() - start
        full = seconds_per_step(env, args.steps)
        set_cameras(env, False)
        physics = seconds_per_step(env, args.steps)
        env.close()
        share = max(0.0, full - physics) / full
        print(f"{size:>5} {shadows!s:>8} {full:>12.3f} {physics:>15.3f} {share:>12.0%} {1 / full:>8.1f}   (build+reset {reset_s:.1f} s)")


if __name__ == "__main__":
    main()
