"""Throughput of `vst-vla synth`: samples/s and scenes/s at a given image size and worker count.

    .venv/bin/python bench/synth_throughput.py --image-size 224 --per-skill 40 --workers 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-skill", type=int, default=40, help="train samples per skill (test: a quarter)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from vst_vla.runtime import select_mujoco_renderer

    select_mujoco_renderer()  # before MuJoCo is imported: it fixes its GL backend on import
    from omegaconf import OmegaConf

    from spatial_tuning.synth import synthesize
    from vst_vla.paths import config_dir

    cfg = OmegaConf.load(config_dir() / "synth.yaml")
    cfg.pop("defaults")
    cfg.image_size, cfg.num_workers = args.image_size, args.workers
    cfg.counts_per_skill.train, cfg.counts_per_skill.test = args.per_skill, max(1, args.per_skill // 4)
    with tempfile.TemporaryDirectory() as tmp:
        summary = synthesize(cfg, Path(tmp) / "data")
    t = summary["throughput"]
    n = summary["totals"]["train"] + summary["totals"]["test"]
    print(f"synth throughput: {t['samples_per_s']:.1f} samples/s, {t['scenes_per_s']:.2f} scenes/s "
          f"({n} samples, {t['scenes']} scenes, {t['seconds']:.1f} s) at {args.image_size} px, "
          f"{args.workers} worker(s), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
