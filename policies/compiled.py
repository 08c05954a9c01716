"""Compiled policy inference: `torch.compile` on the backbone's language model and the head's dense parts.

Eager PyTorch at batch 1 is launch-bound on a GPU (most of a chunk's milliseconds are kernel launches), so the
parts that run every chunk are compiled in place (`nn.Module.compile`, weights and state-dict keys unchanged):
the language model of the backbone (the prefill; whole or layer by layer, `compile_scope`), the `l1_chunk` MLP,
the flow expert's blocks and projections.
The vision tower and the mrope index stay eager (data-dependent Python: window indices, per-image splits).
`mode="reduce-overhead"` adds CUDA graphs on CUDA. Outputs equal eager ones within float tolerance (tested on
CPU). `compile=auto` (the default) compiles on CUDA only (`compile_enabled`). `warm_up` runs the policy on blank observations of its own input shapes, twice with prompts of different
lengths, so compilation (and the dynamic-shape recompile a new task length triggers) happens at load time,
not on the first robot request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_SETTINGS = ("auto", "true", "false")  # auto: compiled when the policy runs on CUDA
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("language_model", "layers")
_WARM_UP_TASKS = ("warm up", "warm up the compiled policy with a longer task")


def compile_setting(value: Any) -> str:
    """`auto`, `true` or `false` from a config value (a YAML or JSON bool, or those words in any case)."""
    text = str(value).strip().lower()
    if text not in COMPILE_SETTINGS:
        raise ValueError(f"policy compile={value!r} is not one of {', '.join(COMPILE_SETTINGS)}")
    return text


def compile_enabled(setting: Any, device: torch.device | str, head: str | None = None) -> bool:
    """Whether a policy on `device` is compiled: `true`, or `auto` on CUDA (eager PyTorch at batch 1 is
    launch-bound there; on CPU compilation costs minutes and gains little) for the one-pass heads: the `tokens`
    head decodes step by step against a growing cache, a new shape each step, so `auto` leaves it eager."""
    setting = compile_setting(setting)
    return setting == "true" or (setting == "auto" and torch.device(device).type == "cuda" and head != "tokens")


def compiled_modules(policy: nn.Module, scope: str = "language_model") -> list[nn.Module]:
    """The modules `compile_policy` compiles: the backbone's language model (`scope="language_model"`: one graph
    with the causal mask, which transformers always materialises when traced; `"layers"`: each decoder layer,
    the mask and rotary embeddings left eager so an unpadded prompt keeps sdpa's mask-free causal kernel) and
    the head's dense parts."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope={scope!r} is not one of {', '.join(COMPILE_SCOPES)}")
    language_model = policy.vlm.model.model.language_model
    modules: list[nn.Module] = [language_model] if scope == "language_model" else list(language_model.layers)
    head = policy.head
    if hasattr(head, "mlp"):  # l1_chunk
        modules.append(head.mlp)
    if hasattr(head, "layers"):  # flow: expert blocks and the context projection
        modules += [head.context_proj, *head.layers]
    return modules


def compile_policy(policy: nn.Module, mode: str = "default", backend: str = "inductor",
                   scope: str = "language_model") -> nn.Module:
    """Compile `policy`'s per-chunk modules in place (modules already compiled are left as they are: heads
    sharing one backbone compile it once); returns the policy."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={mode!r} is not one of {', '.join(COMPILE_MODES)}")
    modules = compiled_modules(policy, scope)
    options = {"mode": mode} if backend == "inductor" else {}
    for module in modules:
        if module._compiled_call_impl is None:
            module.compile(backend=backend, **options)
    log.info("compiled policy inference (%s, %s, %s): %d modules", backend, mode, scope, len(modules))
    return policy


def blank_observation(config: Any, task: str) -> dict[str, Any]:
    """A batch-of-one raw observation with the policy's own input shapes (zeros) and `task`."""
    batch: dict[str, Any] = {"task": [task]}
    for key, feature in config.input_features.items():
        batch[key] = torch.zeros(1, *feature.shape)
    return batch


def warm_up(loaded: Any) -> float:
    """Run a loaded policy (`policies.loading.LoadedPolicy`) on blank observations; returns the seconds spent."""
    start = time.perf_counter()
    for task in _WARM_UP_TASKS:
        loaded.predict_action_chunk(blank_observation(loaded.config, task))
    loaded.reset()
    seconds = time.perf_counter() - start
    log.info("warmed up the compiled policy in %.1f s", seconds)
    return seconds
