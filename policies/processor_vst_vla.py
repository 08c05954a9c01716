"""Pre/post-processors of the `vst_vla` policy, in LeRobot's pipeline shape.

Pre: add a batch dimension, check every observation key and shape against the policy's features (a missing,
unexpected or mis-shaped key is an error, never a silent skip), move to the device, normalise (state by
mean/std, actions by q01/q99 to [-1, 1]). Post: unnormalise actions, move to CPU. The statistics are checked
against the features when the pipelines are built and are saved with them (`policy_preprocessor*.json` and
`*.safetensors` in the policy directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.configs import FeatureType, NormalizationMode, PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import EnvTransition, TransitionKey
from lerobot.processor import (
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStep,
    ProcessorStepRegistry,
    make_default_policy_processor_steps,
    make_policy_processor_pipelines,
)

from policies.configuration_vst_vla import VSTVLAConfig

_REQUIRED_STATS = {NormalizationMode.MEAN_STD: ("mean", "std"), NormalizationMode.MIN_MAX: ("min", "max"),
                   NormalizationMode.QUANTILES: ("q01", "q99"), NormalizationMode.QUANTILE10: ("q10", "q90")}


# Privileged simulator state (MetaWorld's 39-D vector, the scripted expert's input): never a policy input, so
# an environment that exposes it is not a mismatch.
PRIVILEGED_KEYS = ("observation.environment_state",)


class NormalizationError(ValueError):
    """Statistics, features or batches whose keys or shapes disagree; the message names the key."""


def check_stats(features: dict[str, PolicyFeature], norm_map: dict, stats: dict[str, dict[str, Any]] | None) -> None:
    """Raise `NormalizationError` unless `stats` has every statistic each normalised feature needs, with its shape."""
    norm_map = {FeatureType(k) if isinstance(k, str) else k: NormalizationMode(v) for k, v in norm_map.items()}
    for key, feature in features.items():
        mode = norm_map.get(feature.type, NormalizationMode.IDENTITY)
        if mode is NormalizationMode.IDENTITY:
            continue
        if not stats or key not in stats:
            known = sorted(stats or {})
            raise NormalizationError(f"no normalisation statistics for feature {key!r} ({mode.value}); "
                                     f"the statistics have keys {known}")
        for name in _REQUIRED_STATS[mode]:
            if name not in stats[key]:
                raise NormalizationError(f"statistics for {key!r} lack {name!r} needed by {mode.value} "
                                         f"(have {sorted(stats[key])})")
            shape = tuple(torch.as_tensor(stats[key][name]).shape)
            if shape != tuple(feature.shape):
                raise NormalizationError(f"statistics {key}.{name} have shape {shape}, feature {key!r} has "
                                         f"shape {tuple(feature.shape)}")


@dataclass
@ProcessorStepRegistry.register(name="vst_vla_feature_check")
class FeatureCheckProcessorStep(ProcessorStep):
    """Fail loudly when an observation lacks a feature the policy was trained on, has one it does not know,
    or has the wrong shape. Images only need 3 channels first (the policy resizes them). Keys listed in
    `ignored` (present in the training data or privileged, deliberately unused) are accepted and dropped."""

    features: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.features = {k: v if isinstance(v, PolicyFeature) else PolicyFeature(FeatureType(v["type"]), tuple(v["shape"]))
                         for k, v in self.features.items()}

    def __call__(self, transition: EnvTransition) -> EnvTransition:
        observation = transition.get(TransitionKey.OBSERVATION) or {}
        expected = {k for k, ft in self.features.items() if ft.type is not FeatureType.ACTION}
        missing = sorted(expected - set(observation))
        if missing:
            raise NormalizationError(f"observation lacks {missing}; the policy expects {sorted(expected)} "
                                     f"and got {sorted(observation)}")
        ignored = set(self.ignored) | set(PRIVILEGED_KEYS)
        unexpected = sorted(k for k in observation if k.startswith("observation.") and k not in expected | ignored)
        if unexpected:
            raise NormalizationError(f"observation has keys {unexpected} the policy was not trained on "
                                     f"(it expects {sorted(expected)}); rename or drop them")
        for key in sorted(expected):
            self._check_shape(key, observation[key])
        if ignored & set(observation):
            transition = dict(transition)
            transition[TransitionKey.OBSERVATION] = {k: v for k, v in observation.items() if k not in ignored}
        return transition

    def _check_shape(self, key: str, value: Any) -> None:
        feature = self.features[key]
        shape = tuple(torch.as_tensor(value).shape)
        if feature.type is FeatureType.VISUAL:
            if len(shape) != 4 or shape[1] != 3:
                raise NormalizationError(f"{key} has shape {shape}; expected [B, 3, H, W] float images in [0, 1]")
        elif shape[1:] != tuple(feature.shape):
            raise NormalizationError(f"{key} has shape {shape}; the policy expects [B, {', '.join(map(str, feature.shape))}]")

    def get_config(self) -> dict[str, Any]:
        return {"features": {k: {"type": ft.type.value, "shape": list(ft.shape)} for k, ft in self.features.items()},
                "ignored": list(self.ignored)}

    def transform_features(self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]):
        return features


def make_vst_vla_pre_post_processors(
    config: VSTVLAConfig, dataset_stats: dict[str, dict[str, Any]] | None = None,
) -> tuple[PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]]:
    """The policy's pre-processor (batch, check, device, normalise) and post-processor (unnormalise, CPU)."""
    features = {**config.input_features, **config.output_features}
    check_stats(features, config.normalization_mapping, dataset_stats)
    steps = make_default_policy_processor_steps(config, dataset_stats)
    check = FeatureCheckProcessorStep(features=features, ignored=list(config.ignored_observation_keys))
    input_steps = [steps.rename_observations, steps.add_batch_dim, check, steps.to_device, steps.normalize]
    return make_policy_processor_pipelines(input_steps=input_steps, output_steps=[steps.unnormalize, steps.to_cpu])
