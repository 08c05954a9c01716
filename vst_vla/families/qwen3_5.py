"""Qwen3.5: natively multimodal, most language layers gated-delta-net linear attention, one in four full attention.

It shares Qwen3-VL's processor (`Qwen3VLProcessor`, 16-pixel patches, timestamped video frames) and interleaved
mrope, has no deepstack, and accepts `input_ids` next to edited `inputs_embeds` (the default policy pass).

Packing is not exact on the kernels we run: transformers' PyTorch fallbacks for the linear-attention layers
(`torch_chunk_gated_delta_rule`, `causal_conv1d_fn`) ignore `cu_seqlens`, so the short convolution and the
recurrent state run across the sample boundaries of a packed row (the `fla` / `causal-conv1d` CUDA kernels take
them, but are not what CPU training or our tests use). SFT on this family trains on padded batches instead;
right padding is exact because both the causal attention and the recurrence only look backwards.
"""

from __future__ import annotations

from vst_vla.families.base import register
from vst_vla.families.qwen3_vl import Qwen3VLFamily, interleaved_mrope_section, trl_chat_template
from vst_vla.tiny import TinySpec

# Qwen3.5's rotary embedding covers a quarter of each head in the released models; the tiny preset rotates half of
# its small heads so each of the three mrope sections keeps a few frequencies.
_TINY_PARTIAL_ROTARY = 0.5


class Qwen3_5Family(Qwen3VLFamily):
    """Qwen3.5 dense checkpoints (`Qwen/Qwen3.5-{0.8B,2B,4B,9B,27B}`) and the `tiny_qwen3_5` preset."""

    name = "qwen3_5"
    label = "Qwen3.5"
    model_types = ("qwen3_5",)
    packing_exact = False
    packing_fallback_reason = ("Qwen3.5's linear-attention layers (gated delta net) ignore per-sample boundaries "
                               "in transformers' PyTorch kernels, so packed rows would leak state across samples; "
                               "training on padded batches instead")

    def chat_template(self) -> str:
        # Shipped by Qwen3.5-2B and smaller: thinking off unless `enable_thinking=True`.
        return trl_chat_template("qwen3_5_nothink")

    def tokenizer_class(self) -> type:
        from transformers import Qwen3_5Tokenizer

        return Qwen3_5Tokenizer

    def text_config(self, spec: TinySpec, tokenizer) -> dict:
        config = super().text_config(spec, tokenizer)
        head_dim = config["head_dim"]
        config["rope_parameters"] = {
            "rope_type": "default", "rope_theta": spec.rope_theta or 10_000_000.0, "partial_rotary_factor": _TINY_PARTIAL_ROTARY,
            "mrope_section": interleaved_mrope_section(int(head_dim * _TINY_PARTIAL_ROTARY)),
            "mrope_interleaved": True,
        }
        linear_heads = max(1, spec.num_key_value_heads)
        config.update(
            linear_conv_kernel_dim=4, linear_key_head_dim=head_dim // 2, linear_value_head_dim=head_dim // 2,
            linear_num_key_heads=linear_heads, linear_num_value_heads=2 * linear_heads,
            # The released pattern is three linear layers then one full-attention layer; the tiny preset ends on a
            # full-attention layer so both kinds are present at any depth >= 2.
            layer_types=["linear_attention"] * (spec.num_hidden_layers - 1) + ["full_attention"],
        )
        return config

    def vision_config(self, spec: TinySpec) -> dict:
        config = super().vision_config(spec)
        config.pop("deepstack_visual_indexes")
        return config

    def build_config(self, spec: TinySpec, tokenizer):
        from transformers import Qwen3_5Config

        return Qwen3_5Config(text_config=self.text_config(spec, tokenizer), vision_config=self.vision_config(spec),
                             tie_word_embeddings=True, **self._vision_ids(tokenizer))

    def model_class(self) -> type:
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration

    def embed_forward(self, model, input_ids, inputs_embeds, attention_mask, pixel_values, image_grid_thw,
                      mm_token_type_ids, use_cache):
        # Qwen3_5Model takes input_ids and edited embeddings together, like Qwen2.5-VL.
        return super(Qwen3VLFamily, self).embed_forward(model, input_ids, inputs_embeds, attention_mask, pixel_values,
                                                        image_grid_thw, mm_token_type_ids, use_cache)


QWEN3_5 = register(Qwen3_5Family())
