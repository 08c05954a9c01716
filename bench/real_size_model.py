"""Randomly initialised Qwen2.5-VL backbones with real dimensions, and the device facts the benchmark reports.

`build_backbone_dir(size, out)` writes a Hugging Face directory (config, safetensors, the project's offline
tokenizer and the stock processor) that `vst_vla.backbone.load_backbone` reads: nothing is downloaded. The 3B and
7B presets copy the published `config.json` dimensions of Qwen2.5-VL-3B/7B-Instruct (text and vision); `small` is
a CPU-sized model of the same architecture for a one-minute run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("bench.real_size_model")


@dataclass(frozen=True)
class BackboneSize:
    """Dimensions of one preset (text model, then vision tower)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool
    mrope_section: tuple[int, int, int]
    vision_depth: int = 32
    vision_hidden: int = 1280
    vision_intermediate: int = 3420
    vision_heads: int = 16
    full_attention_blocks: tuple[int, ...] = (7, 15, 23, 31)


SIZES = {
    # Qwen2.5-VL-3B-Instruct / 7B-Instruct config.json (head_dim 128: mrope over 64 rotary pairs).
    "3b": BackboneSize(2048, 11008, 36, 16, 2, 151936, True, (16, 24, 24)),
    "7b": BackboneSize(3584, 18944, 28, 28, 4, 152064, False, (16, 24, 24)),
    # CPU: the same architecture at a size one step of which takes well under a second (head_dim 64).
    "small": BackboneSize(256, 512, 2, 4, 2, 8192, True, (8, 12, 12), vision_depth=2, vision_hidden=128,
                          vision_intermediate=256, vision_heads=2, full_attention_blocks=(1,)),
}

# Dense bf16 tensor-core peak (no sparsity), from the vendors' data sheets, in TFLOP/s.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "RTX 4090": 165.0, "B200": 2250.0}


def backbone_config(size: BackboneSize, token_ids: dict[str, int]):
    """The `Qwen2_5_VLConfig` of a preset, with the special-token ids of the offline tokenizer."""
    from transformers import Qwen2_5_VLConfig

    text = {"vocab_size": size.vocab, "hidden_size": size.hidden, "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers, "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads, "max_position_embeddings": 128000,
            "max_window_layers": size.layers, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                "mrope_section": list(size.mrope_section)},
            "bos_token_id": token_ids["<|endoftext|>"], "eos_token_id": token_ids["<|im_end|>"],
            "pad_token_id": token_ids["<|endoftext|>"], "tie_word_embeddings": size.tie_embeddings}
    vision = {"depth": size.vision_depth, "hidden_size": size.vision_hidden,
              "intermediate_size": size.vision_intermediate, "num_heads": size.vision_heads,
              "out_hidden_size": size.hidden, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "window_size": 112, "fullatt_block_indexes": list(size.full_attention_blocks),
              "tokens_per_second": 2}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=token_ids["<|image_pad|>"],
                            video_token_id=token_ids["<|video_pad|>"],
                            vision_start_token_id=token_ids["<|vision_start|>"],
                            vision_end_token_id=token_ids["<|vision_end|>"], tie_word_embeddings=size.tie_embeddings)


def build_backbone_dir(size_name: str, out: Path, device: str, max_pixels: int) -> tuple[Path, float]:
    """Build the preset with random weights on `device` (bf16 on CUDA, fp32 on CPU) and save it to `out`.

    Returns the directory and the seconds spent. The processor's `max_pixels` bounds image tokens per image.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vst_vla.tiny import QWEN2_5_VL_SPECIAL_TOKENS, TinySpec, build_processor, build_tokenizer

    start = time.perf_counter()
    tokenizer = build_tokenizer(TinySpec())
    processor = build_processor(tokenizer, 3136, max_pixels)
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_5_VL_SPECIAL_TOKENS}
    config = backbone_config(SIZES[size_name], token_ids)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=dtype)
    model.generation_config.pad_token_id = token_ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out, time.perf_counter() - start


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def device_name(device: str) -> str:
    """A readable name of the device the benchmark runs on."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s: `--peak-tflops` when given, else the table for known GPUs."""
    if override_tflops:
        return override_tflops * 1e12
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def model_flops_utilisation(params: int, tokens: int, seconds: float, peak: float | None) -> float | None:
    """MFU = 6 x params x tokens / seconds / peak (forward + backward of a dense model; attention not counted)."""
    if peak is None or seconds <= 0:
        return None
    return 6.0 * params * tokens / seconds / peak


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
