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


SAVED_CAMERA, SAVED_STATE = "observation.images.front", "observation.state"


def saved_tiny_policy(tiny_backbone, path, head: str, finetune: str = "full", perturb: bool = False):
    """Save a fresh tiny policy (64 px camera `SAVED_CAMERA`, 3-D state, 2-D actions, 4-action chunks, unit
    normalisation stats) to `path`; returns the saved folder. `perturb` moves every weight off its initial value,
    so a weight that failed to load shows."""
    import numpy as np
    from lerobot.configs import FeatureType, PolicyFeature

    from policies.configuration_vst_vla import VSTVLAConfig
    from policies.loading import new_policy, save_policy

    config = VSTVLAConfig(head=head, chunk_size=4, n_action_steps=4, image_size=56, device="cpu", flow_steps=3,
                          finetune=finetune, lora_rank=4,
                          input_features={SAVED_CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
                                          SAVED_STATE: PolicyFeature(FeatureType.STATE, (3,))},
                          output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))})
    stats = {key: {"mean": np.zeros(dim), "std": np.ones(dim), "min": -np.ones(dim), "max": np.ones(dim),
                   "q01": -np.ones(dim), "q99": np.ones(dim)} for key, dim in ((SAVED_STATE, 3), ("action", 2))}
    loaded = new_policy(config, stats, backbone=copy.deepcopy(tiny_backbone))
    if perturb:
        with torch.no_grad():
            for param in loaded.policy.parameters():
                param.add_(0.01 * torch.randn_like(param))
    return save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, path)
