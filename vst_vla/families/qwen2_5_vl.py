"""Qwen2.5-VL: the paper's backbone and the default `tiny` preset (its recipe lives in `vst_vla/tiny.py`)."""

from __future__ import annotations

from vst_vla.families.base import BackboneFamily, register
from vst_vla.tiny import (
    _NOT_SPECIAL,
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN2_5_VL_SPECIAL_TOKENS,
    TinySpec,
    build_config,
    build_processor,
)


class Qwen2_5_VLFamily(BackboneFamily):
    """Qwen2.5-VL 3B/7B, the published VST checkpoints, and the `tiny` preset (unchanged by the families)."""

    name = "qwen2_5_vl"
    label = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    special_tokens = tuple(QWEN2_5_VL_SPECIAL_TOKENS)
    not_special = frozenset(_NOT_SPECIAL)

    @property
    def tiny_source(self) -> str:
        return "tiny"

    def tiny_cache_key(self, spec: TinySpec) -> str:
        return spec.cache_key()  # the key the preset had before the families: existing caches stay valid

    def chat_template(self) -> str:
        return QWEN2_5_VL_CHAT_TEMPLATE

    def tokenizer_class(self) -> type:
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer

    def build_processor(self, tokenizer, min_pixels: int, max_pixels: int):
        return build_processor(tokenizer, min_pixels, max_pixels)

    def build_config(self, spec: TinySpec, tokenizer):
        return build_config(spec, tokenizer)

    def model_class(self) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration


QWEN2_5_VL = register(Qwen2_5_VLFamily())
