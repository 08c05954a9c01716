"""Packed (varlen) attention without flash-attn: per-sample causal attention that never builds a dense mask.

On sdpa, transformers turns restarting `position_ids` into a dense `[L, L]` block-diagonal mask per row: at 8192
tokens per pack and 36 layers that ran a 139 GB GPU out of memory. Qwen2.5-VL refuses transformers'
`flex_attention` (`_supports_flex_attn = False`), so we register our own attention implementation, `sdpa_varlen`,
through transformers' `AttentionInterface`. It reads sample boundaries from the text position ids (a restart
means a new sample, as transformers' `find_packed_sequence_indices` and flash-attention's varlen path do) and
runs causal attention per sample:

- on CUDA in bf16/fp16: PyTorch's own `torch.nn.attention.varlen.varlen_attn` (flash kernel, one call per layer);
- elsewhere: `scaled_dot_product_attention(is_causal=True)` on each sample's slice (memory linear in the pack).

Its mask function builds no mask for unpadded input (packed rows have no padding mask), and the stock sdpa mask
when a padding mask really pads. Calls without position ids, with a mask (padding) or with query and key lengths
that differ (a KV cache) go to stock sdpa unchanged, and so does the vision tower (it calls attention per image
with `is_causal=False`).
"""

from __future__ import annotations

import logging
from itertools import pairwise

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "sdpa_varlen"
# Architectures whose text attention receives the text position ids (checked against unpacked runs in
# tests/test_packed_attention.py); others keep transformers' dense block mask on sdpa.
VARLEN_MODEL_TYPES = {"qwen2_5_vl"}


def sample_boundaries(text_positions: torch.Tensor) -> list[int]:
    """Start offsets of the samples in one row of text positions, plus the row length at the end.

    A sample starts wherever the position does not follow its predecessor by one (as in transformers'
    `find_packed_sequence_indices`): `[0 1 2 0 1 0 1 2 3]` -> `[0, 3, 5, 9]`.
    """
    length = text_positions.numel()
    restarts = (text_positions[1:] - text_positions[:-1] != 1).nonzero().flatten() + 1
    return [0, *restarts.tolist(), length]


def _use_flash_varlen(query: torch.Tensor) -> bool:
    if query.device.type != "cuda" or query.dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.9)
    except ImportError:
        return False
    return True


def _flash_varlen(query, key, value, starts: list[list[int]], scaling: float | None) -> torch.Tensor:
    """All rows' samples in one `varlen_attn` call; returns `[B, L, H, D]`."""
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    # Flash varlen takes (tokens, heads, dim). The flash kernel handles grouped-query attention itself (query
    # heads a multiple of key/value heads), so keys and values are not repeated: no 8x copies saved for backward.
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    offsets = [row * length + s for row, row_starts in enumerate(starts) for s in row_starts[:-1]] + [batch * length]
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=query.device)
    longest = max(b - a for row_starts in starts for a, b in pairwise(row_starts))
    out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, scale=scaling, window_size=(-1, 0))
    return out.reshape(batch, length, heads, dim)


def _sdpa_per_sample(query, key, value, starts: list[list[int]], scaling: float | None) -> torch.Tensor:
    """Causal sdpa on each sample's slice (no mask tensor, so sdpa may pick its fused kernels); `[B, L, H, D]`."""
    rows = []
    for row, row_starts in enumerate(starts):
        pieces = [F.scaled_dot_product_attention(query[row:row + 1, :, a:b], key[row:row + 1, :, a:b],
                                                 value[row:row + 1, :, a:b], is_causal=True, scale=scaling,
                                                 enable_gqa=key.shape[1] != query.shape[1])
                  for a, b in pairwise(row_starts)]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous()


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None,
                             position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention interface: `query [B, H, L, D]`, `key/value [B, Hkv, L, D]` -> `[B, L, H, D]`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (position_ids is not None and attention_mask is None and dropout == 0.0
              and query.shape[2] == key.shape[2] and getattr(module, "is_causal", True) and is_causal is not False)
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    positions = position_ids.expand(query.shape[0], -1)
    starts = [sample_boundaries(positions[row]) for row in range(positions.shape[0])]
    if _use_flash_varlen(query):
        return _flash_varlen(query, key, value, starts, scaling), None
    return _sdpa_per_sample(query, key, value, starts, scaling), None


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """transformers mask interface for `sdpa_varlen`: no mask unless a 2-D padding mask really pads (then the
    stock sdpa mask, and the attention function takes the stock path). Packed rows come without a padding mask,
    so their block-diagonal mask is never built: the attention function splits the samples instead."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or bool(attention_mask[:, -kv_length:].all()):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register_varlen_attention() -> str:
    """Register `sdpa_varlen` and its mask with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_mask)
    return VARLEN_ATTENTION


def use_varlen_attention(model: torch.nn.Module) -> str:
    """Switch a packed-SFT model's language model from sdpa to `sdpa_varlen`; returns the implementation in use.

    flash-attention (already varlen) and eager are left alone; the vision tower keeps its own implementation.
    """
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", config)
    current = getattr(text_config, "_attn_implementation", None)
    if current != "sdpa" or getattr(config, "model_type", None) not in VARLEN_MODEL_TYPES:
        return str(current)
    register_varlen_attention()
    model.set_attn_implementation({"text_config": VARLEN_ATTENTION})
    log.info("packed SFT: language-model attention sdpa -> %s (per-sample causal, no dense mask)", VARLEN_ATTENTION)
    return VARLEN_ATTENTION


def packs_in_one_row(attn_implementation: str) -> bool:
    """Whether the collator should lay the whole batch out as one row (varlen kernels need no padding rows)."""
    return attn_implementation.startswith("flash") or attn_implementation == VARLEN_ATTENTION
