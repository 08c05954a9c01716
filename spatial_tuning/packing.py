"""Packing multimodal SFT samples: group samples into sequences up to a token budget, no padding.

A packed batch is one row holding several samples back to back. Each sample keeps its own positions: row 0 of the
`[4, 1, L]` `position_ids` restarts at 0 per sample (transformers reads the restarts as sequence boundaries and
builds a block-diagonal causal mask, or flash-attention varlen on GPU), rows 1-3 are the sample's 3-D mrope
positions from the model family's own `get_rope_index`. With `attention_mask=None` and `use_cache=False` this
matches running the samples one by one. A family whose layers cannot keep samples apart in one row (Qwen3.5's
linear attention on PyTorch kernels) trains on padded batches instead (`packing_supported`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from spatial_tuning.sample import SpatialSample
from spatial_tuning.sft_tokenize import IGNORE_INDEX, encode_sample
from vst_vla.families import RopePositions, family_of

log = logging.getLogger(__name__)

_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def pack_samples(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group sample indices into packs of at most `max_tokens` tokens (first-fit decreasing).

    A sample longer than `max_tokens` gets a pack of its own (it is never cut: cutting would drop image tokens).
    Packs come back in a deterministic order; indices inside a pack are in ascending order.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens_per_pack must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        slot = next((p for p, free in enumerate(room) if free >= n), None)
        if slot is None:
            if n > max_tokens:
                log.warning("sample %d has %d tokens, more than max_tokens_per_pack=%d: it is packed alone",
                            i, n, max_tokens)
            packs.append([i])
            room.append(max_tokens - n)
        else:
            packs[slot].append(i)
            room[slot] -= n
    return [sorted(p) for p in packs]


# Per-sample 3-D rope positions by the model family's own `get_rope_index` (the name packing code has always used).
MropePositions = RopePositions


def rope_positions(model) -> RopePositions:
    """The per-sample rope positions of `model`'s family, for `PackedCollator`."""
    return family_of(model).rope_positions(model)


def packing_supported(model, packing: bool) -> bool:
    """`packing`, unless `model`'s family cannot pack exactly: then padded batches, with the reason logged."""
    family = family_of(model)
    if packing and not family.packing_exact:
        log.warning("packing=true ignored for %s: %s", family.label, family.packing_fallback_reason)
        return False
    return packing


class SFTDataset(Dataset):
    """Encodes samples on access; with `packs` each item is one pack (a list of encoded samples)."""

    def __init__(self, samples: Sequence[SpatialSample], processor, packs: list[list[int]] | None = None) -> None:
        self.samples = list(samples)
        self.processor = processor
        self.packs = packs if packs is not None else [[i] for i in range(len(self.samples))]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> list[dict[str, torch.Tensor]]:
        return [encode_sample(self.samples[i], self.processor) for i in self.packs[index]]


def _concat_vision(encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for key in _VISION_KEYS:
        parts = [e[key] for e in encoded if key in e]
        if parts:
            out[key] = torch.cat(parts, dim=0)
    return out


@dataclass
class PackedCollator:
    """Builds a packed batch with per-sample positions from a list of packs.

    `one_row=True` (flash-attention varlen) puts every sample of the batch in a single row: no padding at all.
    `one_row=False` (sdpa, eager) makes one row per pack, padded to the longest pack: the dense block-diagonal
    mask then costs (pack length)^2 per row instead of (batch tokens)^2.
    """

    positions: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    pad_token_id: int = 0
    one_row: bool = True

    def __call__(self, batch: list[list[dict[str, torch.Tensor]]]) -> dict[str, object]:
        rows = [[e for pack in batch for e in pack]] if self.one_row else batch
        built = [self._row(row) for row in rows]
        length = max(ids.numel() for ids, _, _ in built)
        input_ids, labels, positions = [], [], []
        for ids, row_labels, row_positions in built:
            pad = length - ids.numel()
            input_ids.append(torch.nn.functional.pad(ids, (0, pad), value=self.pad_token_id))
            labels.append(torch.nn.functional.pad(row_labels, (0, pad), value=IGNORE_INDEX))
            # Padding forms its own segment (positions restart at 0): real tokens never attend to it.
            positions.append(torch.cat([row_positions, torch.arange(pad).expand(4, pad)], dim=1))
        return {
            "input_ids": torch.stack(input_ids),
            "labels": torch.stack(labels),
            # No attention_mask: with restarting positions that means block-diagonal (varlen) attention.
            "position_ids": torch.stack(positions, dim=1),
            "use_cache": False,  # with a cache the packed mask is silently skipped
            **_concat_vision([e for row in rows for e in row]),
        }

    def _row(self, encoded: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, labels and `[4, L]` positions of samples laid back to back."""
        for e in encoded:
            # Each sample's first token must be unsupervised, so the shifted loss never predicts across samples.
            if e["labels"][0] != IGNORE_INDEX:
                raise ValueError("a packed sample's first label must be ignored (it would be predicted from the "
                                 "previous sample)")
        text = torch.cat([torch.arange(e["input_ids"].numel()) for e in encoded])
        mrope = torch.cat([self.positions(e) for e in encoded], dim=1)
        return (torch.cat([e["input_ids"] for e in encoded]), torch.cat([e["labels"] for e in encoded]),
                torch.cat([text[None], mrope], dim=0))


@dataclass
class PaddedCollator:
    """Right-pads samples into a `[B, L]` batch (the `packing=false` baseline)."""

    pad_token_id: int

    def __call__(self, batch: list[list[dict[str, torch.Tensor]]]) -> dict[str, object]:
        encoded = [e for pack in batch for e in pack]
        length = max(e["input_ids"].numel() for e in encoded)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.stack([torch.nn.functional.pad(e[key], (0, length - e[key].numel()), value=value)
                                for e in encoded])

        mask = torch.stack([(torch.arange(length) < e["input_ids"].numel()).long() for e in encoded])
        return {"input_ids": pad("input_ids", self.pad_token_id), "labels": pad("labels", IGNORE_INDEX),
                "mm_token_type_ids": pad("mm_token_type_ids", 0), "attention_mask": mask, "use_cache": False,
                **_concat_vision(encoded)}
