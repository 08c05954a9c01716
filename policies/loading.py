"""Saving and loading whole policy directories, and `LoadedPolicy`: the policy with its processors around it.

`LoadedPolicy.select_action` takes RAW LeRobot batches (images float [B, 3, H, W] in [0, 1], state in robot
units, `task` strings) and returns actions in environment units [B, action_dim]; this is the object
`vst-vla eval-sim`, `lerobot-eval`-style loops, export and serving call.

Directory layout (written atomically, marked `_COMPLETE`):
    config.json                      VSTVLAConfig (LeRobot's policy config, type vst_vla)
    model.safetensors                every weight (backbone, head, state projection)
    backbone/                        backbone HF config, tokenizer and processor (no weights)
    policy_preprocessor.json  + policy_preprocessor_step_*_normalizer_processor.safetensors   (statistics)
    policy_postprocessor.json + policy_postprocessor_step_*_unnormalizer_processor.safetensors
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.processor import PolicyProcessorPipeline
from torch import Tensor

from policies.configuration_vst_vla import VSTVLAConfig
from policies.modeling_vst_vla import VSTVLAPolicy
from policies.processor_vst_vla import NormalizationError, make_vst_vla_pre_post_processors
from vst_vla.atomic import atomic_directory, is_complete

log = logging.getLogger(__name__)

POLICY_KIND = "vst_vla-policy"


class LoadedPolicy:
    """A `VSTVLAPolicy` with its pre/post-processors: raw observations in, environment-unit actions out."""

    def __init__(self, policy: VSTVLAPolicy, preprocessor: PolicyProcessorPipeline,
                 postprocessor: PolicyProcessorPipeline, path: Path | None = None):
        self.policy, self.preprocessor, self.postprocessor, self.path = policy, preprocessor, postprocessor, path

    @property
    def config(self) -> VSTVLAConfig:
        return self.policy.config

    @property
    def action_dim(self) -> int:
        return self.policy.action_dim

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the policy and both processors into `directory` in place (`save_policy` makes it atomic)."""
        for part in (self.policy, self.preprocessor, self.postprocessor):
            part.save_pretrained(directory)

    def reset(self) -> None:
        """Call at every episode start: clears the queued actions of the current chunk."""
        self.policy.reset()

    @torch.inference_mode()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """One action per observation [B, action_dim] in environment units (a chunk is predicted when needed)."""
        return self.postprocessor(self.policy.select_action(self.preprocessor(_as_tensors(batch))))

    @torch.inference_mode()
    def predict_action_chunk(self, batch: dict[str, Any], rtc_target: Tensor | None = None,
                             rtc_weights: Tensor | None = None, inference_delay: int | None = None,
                             prev_chunk_left_over: Tensor | None = None) -> Tensor:
        """A whole chunk [B, chunk_size, action_dim] in environment units, without touching the queue; with
        `rtc_target` (environment units) sampled by real-time chunking (`policies.execution.rtc`).

        LeRobot's RTC keywords work too (pi0/SmolVLA's `predict_action_chunk`): `prev_chunk_left_over`
        [B, k, action_dim] (here in environment units) is the robot's queued actions from the observation's
        step on, `inference_delay` the d steps the chunk takes to arrive (its first d actions are committed)."""
        guidance = {}
        if rtc_target is not None:
            guidance = {"rtc_target": self._normalize_actions(torch.as_tensor(rtc_target)), "rtc_weights": rtc_weights}
        elif prev_chunk_left_over is not None:
            guidance = {"prev_chunk_left_over": self._normalize_actions(torch.as_tensor(prev_chunk_left_over)),
                        "inference_delay": inference_delay}
        return self.postprocessor(self.policy.predict_action_chunk(self.preprocessor(_as_tensors(batch)), **guidance))

    def _normalize_actions(self, actions: Tensor) -> Tensor:
        """Environment-unit actions to the policy's normalised space (the post-processor's statistics)."""
        for step in self.postprocessor.steps:
            if hasattr(step, "_normalize_action"):  # LeRobot's UnnormalizerProcessorStep
                return step._normalize_action(actions.float(), inverse=False)
        return actions.float()


def _as_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """Numpy arrays to float tensors (robots and simulators often hand numpy); everything else as is."""
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v
            for k, v in batch.items()}


def save_policy(policy: VSTVLAPolicy, preprocessor: PolicyProcessorPipeline, postprocessor: PolicyProcessorPipeline,
                out_dir: str | Path, overwrite: bool = True) -> Path:
    """Write a self-contained policy directory atomically (complete under its final name, or not at all).

    `overwrite` replaces only a policy directory vst-vla wrote; a folder holding anything else is refused."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite, kind=POLICY_KIND) as tmp:
        LoadedPolicy(policy, preprocessor, postprocessor).save_pretrained(tmp)
    log.info("saved policy to %s", out_dir)
    return out_dir


def _check_processor_features(config: VSTVLAConfig, preprocessor: PolicyProcessorPipeline, path: Path) -> None:
    """The saved normaliser must describe exactly the policy's features (keys and shapes)."""
    expected = {k: tuple(v.shape) for k, v in {**config.input_features, **config.output_features}.items()}
    for step in preprocessor.steps:
        features = getattr(step, "features", None)
        if not features:
            continue
        saved = {k: tuple(v.shape) for k, v in features.items()}
        if saved != expected:
            raise NormalizationError(f"{path}: processor step {type(step).__name__} has features {saved}, "
                                     f"the policy config has {expected}")


def load_policy(path: str | Path, device: str = "cpu", n_action_steps: int | None = None,
                flow_steps: int | None = None, execution_mode: str | None = None,
                inference_delay_steps: int | None = None, temporal_ensemble_coeff: float | None = None,
                compile: bool | str | None = None, compile_mode: str | None = None, compile_backend: str | None = None,
                compile_scope: str | None = None, **_: Any) -> LoadedPolicy:
    """Load a policy directory written by `save_policy` (or a `lerobot-train` checkpoint's pretrained_model/).

    `n_action_steps`, `flow_steps` and the execution settings (`execution_mode`, `inference_delay_steps`,
    `temporal_ensemble_coeff`; see `policies.execution`) and compilation (`compile`, `compile_mode`,
    `compile_backend`, `compile_scope`; see `policies.compiled`: `compile=auto` compiles on CUDA only) override the
    saved inference settings;
    everything else comes from the directory. A compiled policy is warmed up here, before it answers anything.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"policy directory {path} does not exist")
    if not is_complete(path) and not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"policy directory {path} is incomplete (no _COMPLETE marker, no model.safetensors)")
    config = VSTVLAConfig.from_pretrained(path)
    config.device = device
    if n_action_steps is not None:
        config.n_action_steps = min(int(n_action_steps), config.chunk_size)
    if flow_steps is not None:
        config.flow_steps = int(flow_steps)
    execution = {"execution_mode": execution_mode, "inference_delay_steps": inference_delay_steps,
                 "temporal_ensemble_coeff": temporal_ensemble_coeff, "compile": compile, "compile_mode": compile_mode,
                 "compile_backend": compile_backend, "compile_scope": compile_scope}
    for name, value in execution.items():
        if value is not None:
            setattr(config, name, type(getattr(config, name))(value))
    config._check_execution()
    policy = VSTVLAPolicy.from_pretrained(path, config=config)
    device_override = {"device_processor": {"device": device}}
    preprocessor = PolicyProcessorPipeline.from_pretrained(path, config_filename="policy_preprocessor.json",
                                                           overrides=device_override)
    from lerobot.processor import policy_action_to_transition, transition_to_policy_action

    postprocessor = PolicyProcessorPipeline.from_pretrained(path, config_filename="policy_postprocessor.json",
                                                            to_transition=policy_action_to_transition,
                                                            to_output=transition_to_policy_action)
    _check_processor_features(config, preprocessor, path)
    policy.eval()
    loaded = LoadedPolicy(policy, preprocessor, postprocessor, path)
    from policies.compiled import compile_enabled, compile_policy, warm_up

    policy_device = next(policy.parameters()).device
    if compile_enabled(config.compile, policy_device, config.head):
        log.info("policy inference: compiled (compile=%s on %s; %s, %s, %s), warming up", config.compile,
                 policy_device, config.compile_backend, config.compile_mode, config.compile_scope)
        compile_policy(policy, config.compile_mode, config.compile_backend, config.compile_scope)
        warm_up(loaded)
    else:
        log.info("policy inference: eager (compile=%s on %s)", config.compile, policy_device)
    return loaded


def new_policy(config: VSTVLAConfig, dataset_stats: dict[str, dict[str, Any]], backbone=None) -> LoadedPolicy:
    """A fresh policy and processors for `config` (features already set) and the dataset's statistics."""
    preprocessor, postprocessor = make_vst_vla_pre_post_processors(config, dataset_stats)
    return LoadedPolicy(VSTVLAPolicy(config, backbone=backbone), preprocessor, postprocessor)
