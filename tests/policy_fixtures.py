"""A tiny VST-VLA policy on the shared tiny backbone and observations for it (execution and latency tests)."""

from __future__ import annotations

import copy

import torch


def tiny_vla_policy(tiny_backbone, head: str, flow_steps: int = 2, **execution):
    """A freshly initialised policy (seeded) with a 6-action chunk, 3 executed per chunk, one 32 px camera, a 4-D
    state and 2-D actions; `execution` sets the execution mode and its settings."""
    from lerobot.configs import FeatureType, PolicyFeature

    from policies.configuration_vst_vla import VSTVLAConfig
    from policies.modeling_vst_vla import VSTVLAPolicy

    config = VSTVLAConfig(head=head, chunk_size=6, n_action_steps=3, image_size=56, device="cpu",
                          flow_steps=flow_steps,
                          input_features={"observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                                          "observation.state": PolicyFeature(FeatureType.STATE, (4,))},
                          output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))}, **execution)
    torch.manual_seed(0)
    return VSTVLAPolicy(config, backbone=copy.deepcopy(tiny_backbone)).eval()


def front_camera_observation(seed: int) -> dict:
    """One observation for `tiny_vla_policy`, drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return {"observation.images.front": torch.rand(1, 3, 32, 32, generator=generator),
            "observation.state": torch.randn(1, 4, generator=generator), "task": ["push the button"]}
