"""The policy sections of `bench/real_size.py`: VLA training step per head, chunk latency per head against the
bare prefill (eager and compiled), loading a saved policy against reading its weights, served latency.

Every head sits on the same backbone (the `tokens` head on its own copy: it grows the vocabulary). Policies
take one camera at the preset's image size, an 8-D state, 7-D actions (the paper's LIBERO end effector and
gripper), identity-like statistics: speed does not depend on the weights.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from action_throughput import head_settings, interleaved_best
from lerobot.configs import FeatureType, PolicyFeature
from real_size_model import synchronize

from policies.configuration_vst_vla import VSTVLAConfig
from policies.loading import LoadedPolicy, new_policy

log = logging.getLogger("bench.real_size_policy")

CAM, STATE = "observation.images.front", "observation.state"
HEADS = ("tokens", "l1_chunk", "flow")
TASK = "put the red block in the green bowl"
STATE_DIM, ACTION_DIM = 8, 7


@dataclass(frozen=True)
class PolicySettings:
    """Sizes of the policy measurements."""

    image_size: int
    train_batch: int
    train_steps: int
    repeats: int
    compile_mode: str
    compile_backend: str
    compile_scope: str = "language_model"


def _config(head: str, settings: PolicySettings, device: str) -> VSTVLAConfig:
    defaults = head_settings(head, _NoOverrides())
    config = VSTVLAConfig(image_size=settings.image_size, device=device, **defaults)
    side = settings.image_size
    config.input_features = {CAM: PolicyFeature(FeatureType.VISUAL, (3, side, side)),
                             STATE: PolicyFeature(FeatureType.STATE, (STATE_DIM,))}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}
    return config


class _NoOverrides:
    chunk_size = flow_steps = expert_layers = head_hidden_dim = None


def _stats() -> dict:
    return {STATE: {"mean": torch.zeros(STATE_DIM), "std": torch.ones(STATE_DIM), "min": -torch.ones(STATE_DIM),
                    "max": torch.ones(STATE_DIM)},
            "action": {"q01": -torch.ones(ACTION_DIM), "q99": torch.ones(ACTION_DIM), "min": -torch.ones(ACTION_DIM),
                       "max": torch.ones(ACTION_DIM), "mean": torch.zeros(ACTION_DIM), "std": torch.ones(ACTION_DIM)}}


def build_policies(backbone, settings: PolicySettings, device: str) -> dict[str, LoadedPolicy]:
    """One policy per head on `backbone` (model, processor), on `device`, in eval mode."""
    policies = {}
    for head in HEADS:
        own = (copy.deepcopy(backbone[0]), backbone[1]) if head == "tokens" else backbone
        loaded = new_policy(_config(head, settings, device), _stats(), backbone=own)
        loaded.policy.to(device).eval()
        policies[head] = loaded
    return policies


def raw_observation(batch: int, image_size: int, with_actions: int = 0) -> dict:
    """A raw LeRobot batch (random camera and state; with `with_actions`, a chunk of that many actions)."""
    generator = torch.Generator().manual_seed(0)
    obs = {CAM: torch.rand(batch, 3, image_size, image_size, generator=generator),
           STATE: torch.randn(batch, STATE_DIM, generator=generator), "task": [TASK] * batch}
    if with_actions:
        obs["action"] = torch.rand(batch, with_actions, ACTION_DIM, generator=generator) * 2 - 1
        obs["action_is_pad"] = torch.zeros(batch, with_actions, dtype=torch.bool)
    return obs


def train_step_seconds(loaded: LoadedPolicy, settings: PolicySettings, device: str) -> dict:
    """Seconds per optimiser step (forward, backward, AdamW) on one batch, after one warm-up step."""
    policy = loaded.policy
    batch = loaded.preprocessor(raw_observation(settings.train_batch, settings.image_size, policy.config.chunk_size))
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-5)
    policy.train()
    times = []
    try:
        for _ in range(settings.train_steps + 1):
            start = time.perf_counter()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                loss, _ = policy(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as err:
        return {"error": f"out of memory: {str(err).splitlines()[0][:160]}"}
    finally:
        policy.eval()
        del optimizer
    return {"seconds": min(times[1:]), "batch": settings.train_batch}


def _timed(fn, device: str):
    def call():
        fn()
        synchronize(device)
    return call


def chunk_latencies(policies: dict[str, LoadedPolicy], settings: PolicySettings, device: str,
                    compiled: bool) -> dict[str, float]:
    """Best seconds per chunk of each head, the bare prefill and the prompt preparation (batch 1)."""
    from policies.compiled import compile_policy

    calls = {}
    for head, loaded in policies.items():
        if compiled and head == "tokens":
            continue  # autoregressive decoding with a growing cache: not compiled (see policies/compiled.py)
        policy = loaded.policy
        if compiled:
            compile_policy(policy, settings.compile_mode, settings.compile_backend, settings.compile_scope)
        batch = loaded.preprocessor(raw_observation(1, settings.image_size))
        inputs, state = policy.prepare_inputs(batch)
        calls[head] = _timed(functools.partial(policy.predict_from_inputs, inputs, state), device)
        if head == "l1_chunk":
            calls["prefill"] = _timed(functools.partial(policy.vlm, inputs, state), device)
            calls["prepare"] = _timed(functools.partial(policy.prepare_inputs, batch), device)
            calls["l1_chunk_e2e"] = _timed(functools.partial(loaded.predict_action_chunk,
                                                             raw_observation(1, settings.image_size)), device)
    with torch.inference_mode():
        return interleaved_best(calls, settings.repeats, warmup=3)


def latency_lines(eager: dict[str, float], compiled: dict[str, float] | None, chunks: dict[str, int],
                  device_label: str) -> list[str]:
    """Per-head chunk latency, actions/s and ratio to the prefill; eager and compiled side by side."""
    lines = [(f"  {'':<14}{'eager ms':>10}{'compiled ms':>13}{'speed-up':>10}{'/prefill eager':>16}"
             f"{'/prefill comp.':>16}{'actions/s eager':>17}   ({device_label}, batch 1)")]
    for name in ("prepare", "prefill", *HEADS, "l1_chunk_e2e"):
        if name not in eager:
            continue
        e = eager[name]
        c = (compiled or {}).get(name)
        over = (lambda t, ref: f"{t / ref:.2f}x" if ref else "-")
        row = f"  {name:<14}{e * 1e3:10.2f}"
        row += f"{c * 1e3:13.2f}{e / c:9.2f}x" if c else f"{'-':>13}{'-':>10}"
        if name in HEADS:
            row += f"{over(e, eager['prefill']):>16}"
            row += f"{over(c, compiled['prefill']):>16}" if c and compiled and "prefill" in compiled else f"{'-':>16}"
            row += f"{chunks[name] / e:17.1f}"
        lines.append(row)
    if "tokens" in eager:
        for head in ("l1_chunk", "flow"):
            ratio = (chunks[head] / eager[head]) / (chunks["tokens"] / eager["tokens"])
            lines.append(f"  ratio {head} / tokens actions per second (eager): {ratio:.1f}x")
    return lines


def load_seconds(loaded: LoadedPolicy, root: Path, device: str, random_init_baseline: bool = True) -> dict[str, float]:
    """Save the policy, then time `load_policy` against reading its safetensors alone (and, with
    `random_init_baseline`, against the loading it replaced: minutes of CPU initialisation at 3B)."""
    from safetensors.torch import load_file

    from policies.loading import load_policy, save_policy

    path = save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, root / "policy")
    start = time.perf_counter()
    load_file(str(path / "model.safetensors"))
    read = time.perf_counter() - start
    start = time.perf_counter()
    load_policy(path, device=device, compile=False)  # loading alone: no compilation or warm-up
    full = time.perf_counter() - start
    result = {"read_s": read, "load_s": full, "path": str(path)}
    if random_init_baseline:
        result["random_init_load_s"] = _random_init_load_seconds(path, device)
    return result


def _random_init_load_seconds(path: Path, device: str) -> float:
    """The loading `load_policy` replaced: a randomly initialised architecture, then the weights copied in."""
    from safetensors.torch import load_model

    from policies.modeling_vst_vla import VSTVLAPolicy, build_backbone_architecture

    start = time.perf_counter()
    config = VSTVLAConfig.from_pretrained(path)
    config.device = device
    policy = VSTVLAPolicy(config, backbone=build_backbone_architecture(path / "backbone", config))
    load_model(policy, path / "model.safetensors", strict=True, device=device)
    policy.to(device)
    synchronize(device)
    seconds = time.perf_counter() - start
    del policy
    return seconds
