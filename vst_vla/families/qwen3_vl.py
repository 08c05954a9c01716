"""Qwen3-VL (2B/4B/8B): interleaved mrope, timestamped video frames, deepstack visual features.

Differences from Qwen2.5-VL that the stages see: 16-pixel patches (32 pixels per merged token), rope sections
interleaved over the head dimension (`mrope_interleaved`), a video split into one grid per frame with a
`<t seconds>` text timestamp before each (its `get_rope_index` does the split), and visual features from some
vision layers added to the first language layers (deepstack). The inner `Qwen3VLModel` refuses `input_ids` next
to `inputs_embeds`, so the policy's pass with edited embeddings hands it precomputed rope positions instead.
"""

from __future__ import annotations

from importlib import resources

from vst_vla.families.base import BackboneFamily, register
from vst_vla.tiny import QWEN2_5_VL_SPECIAL_TOKENS, TinySpec

# Qwen3's tokenizer adds the tool-response and think tags after the Qwen2.5-VL tokens, as ordinary tokens.
QWEN3_VL_SPECIAL_TOKENS = (*QWEN2_5_VL_SPECIAL_TOKENS, "<tool_response>", "</tool_response>", "<think>", "</think>")
_QWEN3_NOT_SPECIAL = frozenset({"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
                                "</tool_response>", "<think>", "</think>"})
# Vision normalisation of the released Qwen3-VL processors (SigLIP-2 style).
_IMAGE_MEAN = [0.5, 0.5, 0.5]
_IMAGE_STD = [0.5, 0.5, 0.5]


def trl_chat_template(name: str) -> str:
    """A chat template TRL ships (`trl/chat_templates/<name>.jinja`), the released processors' template."""
    return (resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text()


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """(temporal, height, width) rotary frequencies for `head_dim`, in Qwen3-VL's 24:20:20 proportion of 64."""
    half = head_dim // 2
    spatial = (half * 20) // 64
    return [half - 2 * spatial, spatial, spatial]


class Qwen3VLFamily(BackboneFamily):
    """Qwen3-VL dense checkpoints (`Qwen/Qwen3-VL-{2B,4B,8B}-Instruct`) and the `tiny_qwen3_vl` preset."""

    name = "qwen3_vl"
    label = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    special_tokens = QWEN3_VL_SPECIAL_TOKENS
    not_special = _QWEN3_NOT_SPECIAL
    patch_size = 16

    def chat_template(self) -> str:
        return trl_chat_template("qwen3_vl")

    def tokenizer_class(self) -> type:
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer

    def build_processor(self, tokenizer, min_pixels: int, max_pixels: int):
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        patches = {"patch_size": self.patch_size, "merge_size": 2, "temporal_patch_size": 2,
                   "image_mean": _IMAGE_MEAN, "image_std": _IMAGE_STD}
        image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **patches)
        # Our videos arrive as already-sampled frames: keep them all, and cap pixels explicitly (its default
        # changes across transformers releases).
        video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": 4 * max_pixels},
                                                do_sample_frames=False, cap_pixels_per_frame=False, **patches)
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=video_processor, chat_template=self.chat_template())

    def text_config(self, spec: TinySpec, tokenizer) -> dict:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
        head_dim = spec.hidden_size // spec.num_attention_heads
        return {
            "vocab_size": len(tokenizer), "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_hidden_layers, "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads, "head_dim": head_dim, "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta or 5_000_000.0,
                                "mrope_section": interleaved_mrope_section(head_dim), "mrope_interleaved": True},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        }

    def vision_config(self, spec: TinySpec) -> dict:
        return {
            "depth": spec.vision_depth, "hidden_size": spec.vision_hidden_size, "intermediate_size": 2 * spec.vision_hidden_size,
            "num_heads": spec.vision_num_heads, "out_hidden_size": spec.hidden_size, "patch_size": self.patch_size,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 256,
            # Deepstack: features of every tiny vision layer are added to the first language layers.
            "deepstack_visual_indexes": list(range(spec.vision_depth)),
        }

    def build_config(self, spec: TinySpec, tokenizer):
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(text_config=self.text_config(spec, tokenizer), vision_config=self.vision_config(spec),
                             tie_word_embeddings=True, **self._vision_ids(tokenizer))

    @staticmethod
    def _vision_ids(tokenizer) -> dict[str, int]:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
        return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
                "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}

    def model_class(self) -> type:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    def embed_forward(self, model, input_ids, inputs_embeds, attention_mask, pixel_values, image_grid_thw,
                      mm_token_type_ids, use_cache):
        """Rope positions from `input_ids` first (stored as `rope_deltas` for cached decoding), then the inner
        model on the edited embeddings; it finds the image placeholders by their unedited embedding and adds the
        deepstack features there itself."""
        inner = model.model
        positions, inner.rope_deltas = inner.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                                            attention_mask=attention_mask)
        return inner(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                     pixel_values=pixel_values, image_grid_thw=image_grid_thw, use_cache=use_cache)


QWEN3_VL = register(Qwen3VLFamily())
