"""pi0/SmolVLA-style head: a small action-expert transformer that attends to the backbone's hidden states and
predicts a flow-matching velocity for a noisy action chunk; K Euler steps from noise give the chunk.

The backbone runs once per chunk; its hidden states are projected to keys and values once and reused by all
K integration steps, so a chunk costs one prefill plus K passes of the (small) expert over H action tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.heads.base import ActionHead, masked_mean, sinusoidal_embedding
from policies.vlm import PromptInputs, VLMBackbone


class ExpertLayer(nn.Module):
    """One pi0-style expert block: the action tokens attend jointly to the backbone context (keys and values
    cached per chunk) and to themselves in a single attention; attention and MLP run in parallel on one
    normalised input (GPT-J/PaLM's parallel block, fewer sequential ops per integration step)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.out = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.context_kv_proj = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, heads, L, d]

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the backbone context, computed once per chunk."""
        k, v = self.context_kv_proj(context).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        normed = self.norm(x)
        q, k, v = self._split(self.qkv(normed)).chunk(3, dim=-1)
        k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.out(attended.transpose(1, 2).flatten(2)) + self.mlp(normed)


class FlowMatchingHead(ActionHead):
    """Flow matching (noise at t=1, actions at t=0) with a small action expert attending to the backbone."""

    def __init__(self, hidden_size: int, action_dim: int, config: Any, backbone_layers: int = 1):
        super().__init__(hidden_size, action_dim, config, backbone_layers)
        # Sized from the backbone unless set (SmolVLA's recipe): half its width, half its depth.
        dim = int(config.head_hidden_dim) if config.head_hidden_dim > 0 else hidden_size // 2
        layers = int(config.expert_layers) if config.expert_layers > 0 else max(1, backbone_layers // 2)
        self.dim, self.num_steps = dim, int(config.flow_steps)
        self.context_proj = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, dim))
        self.action_in = nn.Linear(action_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.positions = nn.Parameter(torch.randn(self.chunk_size, dim) * 0.02)
        self.layers = nn.ModuleList(ExpertLayer(dim, int(config.expert_heads)) for _ in range(layers))
        self.norm_out = nn.LayerNorm(dim)
        self.action_out = nn.Linear(dim, action_dim)

    def _context(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None):
        hidden = vlm(inputs, state).last_hidden_state.float()
        context = self.context_proj(hidden)
        # Action tokens see every real context token (never padding) and every action token; without padding
        # no mask is needed (SDPA is faster without one).
        mask = None
        if not bool(inputs.attention_mask.all()):
            own = torch.ones(hidden.shape[0], self.chunk_size, dtype=torch.bool, device=hidden.device)
            mask = torch.cat([inputs.attention_mask.bool(), own], dim=1)[:, None, None, :]
        return [layer.context_kv(context) for layer in self.layers], mask

    def conditioning(self, t: Tensor) -> Tensor:
        """Per-token conditioning [len(t), H, dim]: chunk positions plus the embedded flow time."""
        return self.positions + self.time_mlp(sinusoidal_embedding(t, self.dim))[:, None, :]

    def _integration_conditioning(self, device: torch.device) -> Tensor:
        """Conditioning of the K fixed integration times, cached until a weight it depends on changes."""
        params = [self.positions, *self.time_mlp.parameters()]
        key = (self.num_steps, str(device), *(p._version for p in params), *(p.data_ptr() for p in params))
        if getattr(self, "_conditioning_key", None) != key:
            times = 1.0 - torch.arange(self.num_steps, device=device) / self.num_steps
            self._conditioning_cache, self._conditioning_key = self.conditioning(times), key
        return self._conditioning_cache

    def velocity(self, noisy: Tensor, conditioning: Tensor, kvs: list, mask: Tensor | None) -> Tensor:
        """The expert's velocity field for noisy chunks [B, H, A] under `conditioning` [B or 1, H, dim]."""
        x = self.action_in(noisy) + conditioning
        for layer, kv in zip(self.layers, kvs, strict=True):
            x = layer(x, kv, mask)
        return self.action_out(self.norm_out(x))

    def loss(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None, actions: Tensor,
             action_is_pad: Tensor) -> tuple[Tensor, dict[str, float]]:
        kvs, mask = self._context(vlm, inputs, state)
        actions = actions.float()
        noise = torch.randn_like(actions)
        # pi0's time distribution: Beta(1.5, 1) puts more weight on the noisier end.
        t = torch.distributions.Beta(1.5, 1.0).sample((actions.shape[0],)).to(actions.device) * 0.999 + 0.001
        noisy = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        error = (self.velocity(noisy, self.conditioning(t), kvs, mask) - (noise - actions)) ** 2
        return masked_mean(error, action_is_pad), {}

    @torch.inference_mode()
    def predict(self, vlm: VLMBackbone, inputs: PromptInputs, state: Tensor | None, noise: Tensor | None = None,
                rtc_target: Tensor | None = None, rtc_weights: Tensor | None = None,
                max_guidance: float = 5.0) -> Tensor:
        """A chunk by K Euler steps from noise; with `rtc_target` [B, H, A] and `rtc_weights` [H], sampled by
        real-time chunking's guided inpainting (`policies.execution.rtc`)."""
        kvs, mask = self._context(vlm, inputs, state)
        batch = inputs.input_ids.shape[0]
        x = noise if noise is not None else torch.randn(batch, self.chunk_size, self.action_dim, device=inputs.input_ids.device)
        conditioning = self._integration_conditioning(x.device)
        if rtc_target is not None:
            return self._predict_guided(x, conditioning, kvs, mask, rtc_target, rtc_weights, max_guidance)
        dt = 1.0 / self.num_steps
        for step in range(self.num_steps):
            x = torch.add(x, self.velocity(x, conditioning[step:step + 1], kvs, mask), alpha=-dt)
        return x

    def _predict_guided(self, x: Tensor, conditioning: Tensor, kvs: list, mask: Tensor | None, target: Tensor,
                        weights: Tensor, max_guidance: float) -> Tensor:
        from policies.execution.rtc import rtc_sample

        # Guidance differentiates through the expert: leave inference mode, with ordinary copies of the
        # context (inference tensors cannot be saved for backward).
        with torch.inference_mode(False):
            kvs = [(k.clone(), v.clone()) for k, v in kvs]
            mask = None if mask is None else mask.clone()
            conditioning = conditioning.clone()

            def velocity(noisy: Tensor, step: int) -> Tensor:
                return self.velocity(noisy, conditioning[step:step + 1], kvs, mask)

            return rtc_sample(velocity, x.clone(), target.float().clone(), weights.clone(), self.num_steps,
                              max_guidance)
