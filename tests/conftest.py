"""Shared test set-up: everything offline, MuJoCo rendering through EGL, tiny sizes, CPU."""

from __future__ import annotations

import os

# Set before any test module imports transformers, huggingface_hub or mujoco.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path

import pytest

from vst_vla.paths import config_dir


@pytest.fixture(scope="session")
def tiny_checkpoint_dir() -> Path:
    """The cached tiny Qwen2.5-VL checkpoint directory (built once per machine)."""
    from vst_vla.tiny import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_backbone(tiny_checkpoint_dir):
    """(model, processor) of the tiny preset. Tests that train must deep-copy the model first."""
    from vst_vla.backbone import load_backbone

    return load_backbone({"source": "tiny", "device": "cpu"})


@pytest.fixture
def compose():
    """Compose a shipped config the way the `vst-vla` command does: `compose("sft", ["experiment=tiny"])`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(name: str, overrides: list[str] | None = None):
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=name):
            return hydra_compose(config_name=name, overrides=overrides or [], return_hydra_config=False)

    return _compose
