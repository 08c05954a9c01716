"""OpenVLA-OFT-style head: H learnable action queries appended to the prompt, decoded in one pass, an MLP from
each query's hidden state to one action of the chunk, trained with an L1 loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from policies.heads.base import ActionHead, masked_mean
from policies.vlm import PromptInputs, VLMBackbone


class L1ChunkHead(ActionHead):
    """Parallel decoding of a whole action chunk from H query tokens."""

    def __init__(self, hidden_size: int, action_dim: int, config: Any, backbone_layers: int = 1):
        super().__init__(hidden_size, action_dim, config, backbone_layers)
        self.n_query = self.chunk_size
        self.queries = nn.Parameter(torch.randn(self.chunk_size, hidden_size) * 0.02)
        width = int(config.head_hidden_dim)
        self.mlp = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(),
                                 nn.Linear(width, width), nn.GELU(), nn.Linear(width, action_dim))

    def _chunk(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None) -> Tensor:
        hidden = vlm(inputs, state, self.queries).last_hidden_state[:, -self.chunk_size:]
        return self.mlp(hidden.float())

    def loss(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None, actions: Tensor,
             action_is_pad: Tensor) -> tuple[Tensor, dict[str, float]]:
        error = (self._chunk(vlm, inputs, state) - actions.float()).abs()
        return masked_mean(error, action_is_pad), {}

    @torch.inference_mode()
    def predict(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None) -> Tensor:
        return self._chunk(vlm, inputs, state)
