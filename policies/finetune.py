"""Which backbone parameters train: full fine-tuning, LoRA adapters on the language model, or a frozen
backbone; the vision encoder can be frozen in every mode."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def apply_finetune_mode(backbone: nn.Module, config: Any, train_embeddings: bool = False) -> None:
    """Set `requires_grad` on a Qwen2.5-VL `backbone` for `config.finetune` (full | lora | frozen).

    `train_embeddings` keeps the token embeddings (and the tied LM head) trainable, which the tokens head
    needs for its new vocabulary whatever the mode.
    """
    if config.finetune == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=LORA_TARGETS)
        # Adapters go into the language model only; the vision tower keeps its own (frozen or full) weights.
        inject_adapter_in_model(lora, backbone.model.language_model)
        for name, param in backbone.named_parameters():
            param.requires_grad = "lora_" in name
    elif config.finetune == "frozen":
        backbone.requires_grad_(False)
    if config.freeze_vision_encoder or config.finetune != "full":
        backbone.model.visual.requires_grad_(config.finetune == "full" and not config.freeze_vision_encoder)
    if train_embeddings:
        backbone.get_input_embeddings().requires_grad_(True)
        backbone.lm_head.requires_grad_(True)
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.parameters())
    log.info("backbone fine-tuning %s: %.2fM of %.2fM parameters train", config.finetune, trainable / 1e6, total / 1e6)
