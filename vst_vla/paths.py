"""Where the project's files live: the Hydra config tree and the on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """The Hydra config tree: `$VST_VLA_CONFIG_DIR`, else `configs/` beside the packages."""
    override = os.environ.get("VST_VLA_CONFIG_DIR")
    path = Path(override) if override else REPO_ROOT / "configs"
    if not (path / "info.yaml").is_file():
        raise FileNotFoundError(
            f"Hydra config tree not found at {path} (no info.yaml). Install the project editable "
            "(`pip install -e .`) from a clone, or set VST_VLA_CONFIG_DIR to the clone's configs/ folder."
        )
    return path


def cache_dir() -> Path:
    """Cache for built artifacts (the tiny backbone): `$VST_VLA_CACHE`, else `~/.cache/vst_vla`."""
    path = Path(os.environ.get("VST_VLA_CACHE", Path.home() / ".cache" / "vst_vla"))
    path.mkdir(parents=True, exist_ok=True)
    return path
