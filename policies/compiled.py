"""Compiled policy inference: `torch.compile` on the backbone's language model and the head's dense parts.

Eager PyTorch at batch 1 is launch-bound on a GPU (most of a chunk's milliseconds are kernel launches), so the
parts that run every chunk are compiled in place (`nn.Module.compile`, weights and state-dict keys unchanged):
the language model of the backbone (the prefill), the `l1_chunk` MLP, the flow expert's blocks and projections.
The vision tower and the mrope index stay eager (data-dependent Python: window indices, per-image splits).
`mode="reduce-overhead"` adds CUDA graphs on CUDA. Outputs equal eager ones within float tolerance (tested on
CPU). `warm_up` runs the policy on blank observations of its own input shapes, twice with prompts of different
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

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_WARM_UP_TASKS = ("warm up", "warm up the compiled policy with a longer task")


def compiled_modules(policy: nn.Module) -> list[nn.Module]:
    """The modules `compile_policy` compiles: the backbone's language model and the head's dense parts."""
    modules: list[nn.Module] = [policy.vlm.model.model.language_model]
    head = policy.head
    if hasattr(head, "mlp"):  # l1_chunk
        modules.append(head.mlp)
    if hasattr(head, "layers"):  # flow: expert blocks and the context projection
        modules += [head.context_proj, *head.layers]
    return modules


def compile_policy(policy: nn.Module, mode: str = "default", backend: str = "inductor") -> nn.Module:
    """Compile `policy`'s per-chunk modules in place (idempotent); returns the policy."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if getattr(policy, "_compiled_mode", None) == (mode, backend):
        return policy
    options = {"mode": mode} if backend == "inductor" else {}
    for module in compiled_modules(policy):
        if module._compiled_call_impl is None:  # heads sharing one backbone compile its language model once
            module.compile(backend=backend, **options)
    policy._compiled_mode = (mode, backend)
    log.info("compiled policy inference (%s, %s): %d modules", backend, mode, len(compiled_modules(policy)))
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
