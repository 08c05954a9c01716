"""The interface every action head implements, and `build_head`, which resolves a head by `_target_`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from policies.vlm import PromptInputs, VLMBackbone


class ActionHead(nn.Module, ABC):
    """Turns backbone passes into normalised action chunks [B, chunk_size, action_dim] and a training loss."""

    n_query: int = 0  # action-query placeholder tokens this head needs at the end of the prompt

    def __init__(self, hidden_size: int, action_dim: int, config: Any, backbone_layers: int = 1):
        super().__init__()
        self.hidden_size = hidden_size
        self.backbone_layers = backbone_layers
        self.action_dim = action_dim
        self.chunk_size = int(config.chunk_size)

    def setup(self, vlm: VLMBackbone) -> None:
        """Hook for heads that change the backbone (new vocabulary); called once after construction."""

    @abstractmethod
    def loss(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None, actions: Tensor,
             action_is_pad: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Training loss on normalised `actions` [B, H, A] (padded steps masked out) and logged metrics."""

    @abstractmethod
    def predict(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None) -> Tensor:
        """Normalised action chunk [B, chunk_size, action_dim] for the prompts in `inputs`."""


def masked_mean(per_element: Tensor, action_is_pad: Tensor) -> Tensor:
    """Mean of [B, H, A] losses over the chunk steps that are real (not padding past the episode end)."""
    keep = (~action_is_pad).to(per_element.dtype).unsqueeze(-1).expand_as(per_element)
    return (per_element * keep).sum() / keep.sum().clamp_min(1.0)


def build_head(target: str, hidden_size: int, action_dim: int, config: Any, backbone_layers: int = 1) -> ActionHead:
    """Instantiate the head class at import path `target` (Hydra's `_target_` resolution)."""
    from hydra.utils import get_class

    head_cls = get_class(target)
    if not (isinstance(head_cls, type) and issubclass(head_cls, ActionHead)):
        raise TypeError(f"policy head {target!r} is not an ActionHead subclass")
    return head_cls(hidden_size=hidden_size, action_dim=action_dim, config=config, backbone_layers=backbone_layers)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 100.0) -> Tensor:
    """[B] times in [0, 1] to [B, dim] sine-cosine features."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None] * 2 * torch.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
