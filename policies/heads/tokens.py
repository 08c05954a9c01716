"""The paper's head (OpenVLA-style): each action dimension, normalised to [-1, 1] by q01/q99, falls into one of
256 uniform bins, each bin a new vocabulary token; one action is decoded autoregressively per step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from policies.heads.base import ActionHead, masked_mean
from policies.vlm import PromptInputs, VLMBackbone, add_tokens

ACTION_TOKEN = "<|act_{}|>"


def discretize(actions: Tensor, n_bins: int) -> Tensor:
    """Normalised actions (clipped to [-1, 1]) to bin indices in [0, n_bins)."""
    scaled = (actions.clamp(-1.0, 1.0) + 1.0) / 2.0 * n_bins
    return scaled.floor().long().clamp(0, n_bins - 1)


def undiscretize(bins: Tensor, n_bins: int) -> Tensor:
    """Bin indices to the bin centres in [-1, 1]."""
    return -1.0 + (bins.float() + 0.5) * (2.0 / n_bins)


class TokenActionHead(ActionHead):
    """Discrete action tokens predicted by the backbone's own LM head, one action dimension per token."""

    def __init__(self, hidden_size: int, action_dim: int, config: Any, backbone_layers: int = 1):
        super().__init__(hidden_size, action_dim, config, backbone_layers)
        if self.chunk_size != 1:
            raise ValueError(f"the tokens head decodes one action per step; got chunk_size={self.chunk_size}")
        self.n_bins = int(config.n_bins)
        self.first_token_id: int | None = None

    def setup(self, vlm: VLMBackbone) -> None:
        ids = add_tokens(vlm.model, vlm.processor, [ACTION_TOKEN.format(i) for i in range(self.n_bins)])
        if ids != list(range(ids[0], ids[0] + self.n_bins)):
            raise ValueError("the action tokens must have consecutive ids in the tokenizer")
        self.first_token_id = ids[0]

    def _action_logits(self, vlm: VLMBackbone, hidden: Tensor) -> Tensor:
        # Only the action-token rows of the (possibly tied) LM head: decoding never leaves the action vocabulary.
        rows = vlm.model.lm_head.weight[self.first_token_id:self.first_token_id + self.n_bins]
        return F.linear(hidden, rows)

    def loss(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None, actions: Tensor,
             action_is_pad: Tensor) -> tuple[Tensor, dict[str, float]]:
        bins = discretize(actions[:, 0], self.n_bins)  # [B, A]
        hidden = vlm(inputs.extended(bins + self.first_token_id), state).last_hidden_state
        # Position i predicts token i+1: the A action tokens are predicted from the A positions before them.
        logits = self._action_logits(vlm, hidden[:, -self.action_dim - 1:-1])
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), bins.flatten(), reduction="none").view_as(bins)
        pad = action_is_pad[:, :1]  # the one-step chunk: [B, 1, A] against [B, 1]
        accuracy = masked_mean((logits.argmax(-1) == bins).float().unsqueeze(1), pad)
        return masked_mean(per_token.unsqueeze(1), pad), {"token_accuracy": float(accuracy)}

    @torch.inference_mode()
    def predict(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None) -> Tensor:
        out = vlm(inputs, state, use_cache=True)
        hidden, cache, mask = out.last_hidden_state[:, -1:], out.past_key_values, inputs.attention_mask
        bins = []
        for step in range(self.action_dim):
            token_bins = self._action_logits(vlm, hidden).argmax(-1)  # [B, 1]
            bins.append(token_bins)
            if step + 1 == self.action_dim:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_out = vlm.decode_step(token_bins + self.first_token_id, mask, cache)
            hidden, cache = step_out.last_hidden_state, step_out.past_key_values
        return undiscretize(torch.cat(bins, dim=1), self.n_bins).unsqueeze(1)  # [B, 1, A]
