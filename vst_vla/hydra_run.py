"""Helpers for stage entry points running under Hydra."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf


def run_dir() -> Path:
    """The current Hydra run's output directory (the working directory when not under Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not running under Hydra (e.g. a test calling the entry point directly)
        return Path.cwd()


def resolve_out(cfg: DictConfig, key: str = "output_dir") -> Path:
    """`cfg[key]` when set, else the Hydra run directory."""
    value = OmegaConf.select(cfg, key)
    out = Path(value) if value else run_dir()
    out.mkdir(parents=True, exist_ok=True)
    return out


def setup_torch(cfg: DictConfig) -> None:
    """Seed and thread settings shared by every stage."""
    threads = OmegaConf.select(cfg, "trainer.torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
