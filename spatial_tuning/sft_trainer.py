"""The SFT trainer: `transformers.Trainer` with a token-level loss normalised over the whole optimiser step, a
separate learning rate for the vision tower, freezing and LoRA.

Loss: the summed cross-entropy of every supervised token divided by the number of supervised tokens in the
global batch (all packs, all gradient-accumulation micro-batches, all processes; the Trainer counts them). A
packed step therefore computes exactly the loss and gradient of the same samples run one by one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Trainer
from transformers.loss.loss_utils import ForCausalLMLoss

log = logging.getLogger(__name__)

# Parameter-name prefixes of the backbone parts (the same in every family's `...ForConditionalGeneration`).
VISION_PREFIX = "model.visual."
# The patch merger projects vision features into the language model; Qwen3-VL adds one per deepstack layer.
PROJECTOR_PREFIX = ("model.visual.merger.", "model.visual.deepstack_merger_list.")
LANGUAGE_PREFIXES = ("model.language_model.", "lm_head.")
# LoRA goes on the language model's projections only (the vision blocks reuse some of these names).
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def causal_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
                   ) -> torch.Tensor:
    """Next-token cross-entropy summed over supervised tokens, divided by the global count when given."""
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
    return ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)


def _strip_peft(name: str) -> str:
    return name.removeprefix("base_model.model.")


def is_vision_param(name: str) -> bool:
    """Whether a parameter belongs to the vision tower (including the projector/merger)."""
    return _strip_peft(name).startswith(VISION_PREFIX)


class BackboneCheckpointLoading:
    """Trainer mixin: resume a Qwen2.5-VL's weights through `from_pretrained`, which maps the saved key names back.

    Transformers 5.23 saves Qwen2.5-VL checkpoints under the original hub key names (`visual.*`,
    `model.layers.*`) but `Trainer` resumes with a plain `load_state_dict`, which then matches no key and
    silently keeps the initial weights. Loading the directory the way `from_pretrained` does avoids that.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = model if model is not None else self.model
        if self.is_fsdp_enabled or hasattr(target, "peft_config") or not os.path.isfile(
                os.path.join(resume_from_checkpoint, "config.json")):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(target.parameters()).dtype
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=dtype)
        result = target.load_state_dict(loaded.state_dict(), strict=True)
        del loaded
        log.info("resumed weights from %s (%s)", resume_from_checkpoint, result)


class SpatialSFTTrainer(BackboneCheckpointLoading, Trainer):
    """`Trainer` whose optimiser gives the vision tower its own learning rate (`vision_learning_rate`)."""

    def __init__(self, *args, vision_learning_rate: float | None = None, **kwargs) -> None:
        kwargs.setdefault("compute_loss_func", causal_lm_loss)
        super().__init__(*args, **kwargs)
        self.vision_learning_rate = vision_learning_rate

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimiser, with the vision parameters in groups of their own learning rate."""
        if self.vision_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((name in decay, is_vision_param(name)), []).append(param)
        param_groups = []
        for (decays, vision), params in sorted(groups.items()):
            group: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if vision:
                group["lr"] = self.vision_learning_rate
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        log.info("optimizer: vision tower lr %.3g, rest %.3g", self.vision_learning_rate, self.args.learning_rate)
        return self.optimizer


def apply_freezing(model: torch.nn.Module, vision_tower: bool = False, projector: bool = False,
                   language_model: bool = False) -> dict[str, int]:
    """Freeze the chosen parts (`vision_tower` excludes the projector); returns trainable/frozen counts."""
    for name, param in model.named_parameters():
        name = _strip_peft(name)
        in_projector = name.startswith(PROJECTOR_PREFIX)
        frozen = ((vision_tower and name.startswith(VISION_PREFIX) and not in_projector)
                  or (projector and in_projector)
                  or (language_model and name.startswith(LANGUAGE_PREFIXES)))
        if frozen:
            param.requires_grad_(False)
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}
    if counts["trainable"] == 0:
        raise ValueError("every parameter is frozen: unfreeze something (freeze.* in the sft config) or enable LoRA")
    return counts


def apply_lora(model: torch.nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.05,
               target_modules: str | list[str] = DEFAULT_LORA_TARGETS):
    """Wrap `model` with peft LoRA adapters; other parameters stay as `apply_freezing` left them."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    peft_model = get_peft_model(model, config)
    # peft freezes everything but the adapters; keep modules the user left trainable (e.g. the projector) trainable.
    for name, param in peft_model.named_parameters():
        if "lora_" not in name and _strip_peft(name) in trainable_before and _keep_trainable_with_lora(name):
            param.requires_grad_(True)
    return peft_model


def _keep_trainable_with_lora(name: str) -> bool:
    # With LoRA on the language model, only vision parameters (not frozen by the user) stay fully trainable.
    return is_vision_param(name)


def merged_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model: LoRA adapters merged in, when there are any."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
