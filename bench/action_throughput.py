"""Action throughput of the three heads on the same tiny backbone and inputs, against one bare prefill.

    python bench/action_throughput.py [--chunk-size H] [--flow-steps K] [--action-dim 7] [--repeats 200]

For each head: chunk latency (one `predict` from prepared prompt inputs: backbone pass(es) plus head) and
actions per second (chunk_size / latency; the tokens head yields one action per call, decoding one token per
action dimension with a KV cache). The floor is one bare backbone prefill of the same prompt (images, state
token, task). Tokenisation and image patching are identical for every head and timed separately.
Targets: l1_chunk and flow >= 20x the actions/s of tokens; chunk latency <= 1.3x the prefill.
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
from collections.abc import Callable

import torch
from lerobot.configs import FeatureType, PolicyFeature
from omegaconf import OmegaConf

from policies.configuration_vst_vla import VSTVLAConfig
from policies.loading import new_policy
from vst_vla.backbone import load_backbone
from vst_vla.paths import config_dir


def interleaved_best(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Fastest seconds per call of each function over `repeats` round-robin runs: on a shared machine the
    minimum is the run least disturbed by other load (timeit's advice), and round-robin spreads drift."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def head_settings(head: str, args) -> dict:
    """The shipped `configs/head/<head>.yaml` settings, with the command line's overrides."""
    settings = OmegaConf.to_container(OmegaConf.load(config_dir() / "head" / f"{head}.yaml"))
    settings.pop("name")
    settings["head"] = settings.pop("_target_")
    if head != "tokens":
        for key in ("chunk_size", "flow_steps", "expert_layers", "head_hidden_dim"):
            if getattr(args, key) is not None and (key in settings or key == "chunk_size"):
                settings[key] = getattr(args, key)
        settings["n_action_steps"] = settings["chunk_size"]
    return settings


def build(head: str, args, backbone):
    """A fresh policy for `head` with identity-like statistics (throughput does not depend on them)."""
    config = VSTVLAConfig(image_size=args.image_size, device="cpu", **head_settings(head, args))
    config.input_features = {"observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                             "observation.state": PolicyFeature(FeatureType.STATE, (args.state_dim,))}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (args.action_dim,))}
    stats = {"observation.state": {"mean": torch.zeros(args.state_dim), "std": torch.ones(args.state_dim)},
             "action": {"q01": -torch.ones(args.action_dim), "q99": torch.ones(args.action_dim)}}
    loaded = new_policy(config, stats, backbone=copy.deepcopy(backbone))
    loaded.policy.eval()
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk-size", type=int, default=None, help="default: configs/head/*.yaml")
    parser.add_argument("--flow-steps", type=int, default=None, help="default: configs/head/flow.yaml")
    parser.add_argument("--expert-layers", type=int, default=None, help="default: configs/head/flow.yaml")
    parser.add_argument("--head-hidden-dim", type=int, default=None, help="default: configs/head/*.yaml")
    parser.add_argument("--action-dim", type=int, default=7, help="7: the paper's LIBERO end-effector + gripper")
    parser.add_argument("--state-dim", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = load_backbone({"source": "tiny", "device": "cpu"})
    raw = {"observation.images.front": torch.rand(1, 3, 96, 96), "observation.state": torch.randn(1, args.state_dim),
           "task": ["put the red block in the green bowl"]}

    calls, chunk_sizes = {}, {}
    for head in ("tokens", "l1_chunk", "flow"):
        loaded = build(head, args, backbone)
        policy, batch = loaded.policy, loaded.preprocessor(dict(raw))
        inputs, state = policy.prepare_inputs(batch)
        calls[head] = functools.partial(policy.predict_from_inputs, inputs, state)
        chunk_sizes[head] = policy.config.chunk_size
        if head == "tokens":  # the floor: the same prompt through one bare backbone pass, no head
            calls["prefill"] = functools.partial(policy.vlm, inputs, state)
            calls["prepare"] = functools.partial(policy.prepare_inputs, batch)
    with torch.inference_mode():
        seconds = interleaved_best(calls, args.repeats)
    results = {head: {"latency": seconds[head], "actions_per_s": chunk_sizes[head] / seconds[head]} for head in chunk_sizes}
    prefill = seconds["prefill"]
    for head, result in results.items():
        print(f"{head:9s} chunk={chunk_sizes[head]:2d} latency={result['latency'] * 1e3:7.2f} ms  "
              f"actions/s={result['actions_per_s']:8.1f}")
    print(f"prompt    tokenising + patching (same for every head, not in the latencies): {seconds['prepare'] * 1e3:.2f} ms")
    print(f"prefill   one bare backbone pass over the same prompt: {prefill * 1e3:.2f} ms")
    base = results["tokens"]["actions_per_s"]
    for head in ("l1_chunk", "flow"):
        ratio = results[head]["actions_per_s"] / base
        print(f"ratio {head} / tokens actions per second: {ratio:.1f}x (target >= 20x) "
              f"{'PASS' if ratio >= 20 else 'FAIL'}")
    for head in ("l1_chunk", "flow"):
        ratio = results[head]["latency"] / prefill
        print(f"ratio {head} chunk latency / prefill: {ratio:.2f}x (target <= 1.3x) {'PASS' if ratio <= 1.3 else 'FAIL'}")


if __name__ == "__main__":
    main()
