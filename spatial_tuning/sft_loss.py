"""The SFT loss without the full logits: linear + cross-entropy over the supervised tokens in chunks.

A 152k-token vocabulary over a 16k-token pack makes logits of 2.5G floats, kept for the backward pass: they, not
the model, dominate activation memory. `loss.impl` (the `sft` config) picks how the loss is computed:

- `plain`: the model's logits, then `transformers`' causal-LM loss (`sft_trainer.causal_lm_loss`);
- `chunked`: ours, any device: only the positions with a label are projected, a chunk of `chunk_tokens` at a
  time under activation checkpointing, so no more than one chunk's logits ever exist (recomputed in backward);
- `liger`: liger-kernel's fused linear cross-entropy (Triton, CUDA only; an optional install);
- `auto`: `liger` on CUDA when liger-kernel imports, else `plain`.

`chunked` and `liger` replace the forward of the model instance (as liger-kernel's own patching does): with
labels, it runs the backbone, computes the summed token cross-entropy of the shifted labels and divides it by the
Trainer's `num_items_in_batch` (the supervised tokens of the whole optimiser step) or, without it, by the batch's
own count: the loss and gradient of the plain path, up to float summation order.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

log = logging.getLogger(__name__)

LOSS_IMPLS = ("auto", "plain", "chunked", "liger")
IGNORE_INDEX = -100


@functools.cache
def liger_available() -> bool:
    """Whether liger-kernel imports (installed, with the Triton it runs on; it also needs a CUDA device)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # noqa: F401
    except (ImportError, RuntimeError, OSError) as err:  # no working Triton: fall back, say why
        log.warning("liger-kernel is installed but does not import (%s): loss.impl=auto uses plain", err)
        return False
    return True


def resolve_loss_impl(impl: str, device: torch.device | str) -> str:
    """`plain`, `chunked` or `liger` for the `loss.impl` setting on `device`; a setting that cannot run raises."""
    if impl not in LOSS_IMPLS:
        raise ValueError(f"loss.impl={impl!r} is not one of {', '.join(LOSS_IMPLS)}")
    cuda = torch.device(device).type == "cuda"
    if impl == "auto":
        return "liger" if cuda and liger_available() else "plain"
    if impl == "liger" and not (cuda and liger_available()):
        reason = "the model is not on CUDA" if not cuda else "liger-kernel is not installed (pip install liger-kernel)"
        raise ValueError(f"loss.impl=liger: {reason}; use loss.impl=chunked (any device) or plain")
    return impl


def _chunk_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def chunked_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int = 4096) -> Tensor:
    """Summed cross-entropy of `hidden` [N, H] projected by `weight` [V, H] against `targets` [N] (IGNORE_INDEX
    skipped), in float32; logits exist for one chunk of supervised positions at a time, in forward and backward."""
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_cross_entropy, hidden[piece], weight, targets[piece], use_reentrant=False)
    return total


def liger_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int = 0) -> Tensor:
    """Summed cross-entropy by liger-kernel's fused linear cross-entropy (it picks its own chunks)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    return loss(weight, hidden, targets).float()


_LINEAR_CROSS_ENTROPY: dict[str, Callable[..., Tensor]] = {
    "chunked": chunked_linear_cross_entropy, "liger": liger_linear_cross_entropy}


def shifted_targets(labels: Tensor) -> Tensor:
    """Position i is trained to predict token i+1: labels shifted left, the last position of each row ignored
    (as `transformers`' ForCausalLMLoss does; in a packed row the first token of a sample is a prompt token, so a
    sample never learns from its neighbour)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def causal_lm_loss_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, impl: str, chunk_tokens: int,
                               num_items_in_batch: Tensor | int | None = None) -> Tensor:
    """The plain path's loss (summed token cross-entropy over `num_items_in_batch`, or the mean over the batch's
    supervised tokens) from the last hidden states [B, L, H] and labels [B, L], without the full logits."""
    targets = shifted_targets(labels.to(hidden.device)).reshape(-1)
    summed = _LINEAR_CROSS_ENTROPY[impl](hidden.reshape(-1, hidden.shape[-1]), weight, targets, chunk_tokens)
    if num_items_in_batch is None:
        return summed / (targets != IGNORE_INDEX).sum().clamp_min(1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(summed.device)
    return summed / num_items_in_batch


def use_linear_cross_entropy(model: nn.Module, impl: str, chunk_tokens: int = 4096) -> None:
    """Make `model` (a `...ForConditionalGeneration`) compute its loss by `impl` (`chunked` | `liger`) whenever
    it gets labels; without labels (generation, evaluation of logits) it runs its own forward."""
    if impl not in _LINEAR_CROSS_ENTROPY:
        raise ValueError(f"use_linear_cross_entropy: impl={impl!r} is not one of {', '.join(_LINEAR_CROSS_ENTROPY)}")
    original = type(model).forward

    def forward(self, *args: Any, labels: Tensor | None = None, num_items_in_batch: Tensor | int | None = None,
                logits_to_keep: int | Tensor = 0, **kwargs: Any):
        if labels is None:
            return original(self, *args, logits_to_keep=logits_to_keep, **kwargs)
        outputs = self.model(*args, **kwargs)
        loss = causal_lm_loss_from_hidden(outputs[0], self.lm_head.weight, labels, impl, chunk_tokens,
                                          num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=outputs.past_key_values)

    model.forward = types.MethodType(forward, model)
    # The Trainer passes `num_items_in_batch` to a model that says it takes it (Qwen-VL classes say they do not).
    model.accepts_loss_kwargs = True
    log.info("sft loss: %s linear cross-entropy (no full logits; chunks of %d tokens)", impl, chunk_tokens)


def remove_linear_cross_entropy(model: nn.Module) -> None:
    """Undo `use_linear_cross_entropy`: the model's own forward (full logits) again."""
    for name in ("forward", "accepts_loss_kwargs"):
        vars(model).pop(name, None)
