"""Stage 2: action heads and the VST-VLA LeRobot policy (`vst_vla`), its training recipe, export and serving.

`load_policy(path, device="cpu")` returns a `LoadedPolicy` (raw LeRobot batches in, environment-unit actions
out); importing `policies.configuration_vst_vla` registers the `vst_vla` policy type with LeRobot.
"""

from __future__ import annotations

from typing import Any

from vst_vla.video_decoding import quiet_torchcodec_for_lerobot_cli

# `lerobot-train --policy.discover_packages_path=policies` imports this package before it builds its dataset
# config, whose default video backend probes torchcodec: the probe's failure is one line, or none for images.
quiet_torchcodec_for_lerobot_cli()


def load_policy(path: str, device: str = "cpu", **overrides: Any):
    """Load a saved VST-VLA policy directory with its pre/post-processors (see `policies.loading`)."""
    from policies.loading import load_policy as _load_policy

    return _load_policy(path, device=device, **overrides)


__all__ = ["load_policy"]
