"""The tiny presets: a real backbone of each family at toy size, randomly initialised, with an offline tokenizer.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with `tokenizers` on a built-in corpus, using
the Qwen2 pre-tokenizer and every special token of the family; the processor is the family's stock processor
with its image and video processors; the chat template is the family's. `tiny` is Qwen2.5-VL (this module's
own recipe, below); `tiny_qwen3_vl` and `tiny_qwen3_5` come from `vst_vla/families/`. The built checkpoint is a
normal Hugging Face directory, cached on disk and keyed by the preset's family, dimensions and seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vst_vla.atomic import reset_modes
from vst_vla.paths import cache_dir
from vst_vla.tokenizer_corpus import tokenizer_corpus

if TYPE_CHECKING:
    from vst_vla.families.base import BackboneFamily

log = logging.getLogger(__name__)

# The order gives the token ids right after the BPE vocabulary, as in Qwen2.5-VL's tokenizer.
QWEN2_5_VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
# <tool_call> and the fim tokens are ordinary (non-special) added tokens in Qwen2.5-VL.
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"}

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Every dimension of the tiny preset; the cache key is derived from these and the seed."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_num_heads: int = 2
    min_pixels: int = 3136
    max_pixels: int = 50176
    seed: int = 0
    # The text rotary base (None: the family's own, 1e6 for Qwen2.5-VL). mrope gives an image token's row and
    # column only the lowest rotary frequencies; a small model seeing a 4x4 token grid may need a lower base to
    # tell them apart (see `SIZE_PRESETS["small"]`).
    rope_theta: float | None = None

    def key_fields(self) -> dict:
        """The fields a cache key is derived from: unset (None) optional fields are left out, so the keys of
        presets built before those fields existed stay the same (and their caches valid)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def cache_key(self) -> str:
        payload = json.dumps(self.key_fields(), sort_keys=True) + f"|{_BUILD_VERSION}"
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


_BUILD_VERSION = 1  # bump when the build recipe changes so stale caches are rebuilt

# Larger randomly initialised Qwen2.5-VL presets built by the same recipe, by `model.source` name. `small`
# (12.3M parameters: text 384 wide x 6 layers, vision 192 wide x 4 blocks) is sized so that the whole
# `experiment=small` run fits about 2 hours on 2 CPU cores (one packed 1024-token SFT step ~2 s, a batch of 8
# 48-token generations ~1.5 s on idle cores); `tiny` is the default `TinySpec()` and stays unchanged.
SIZE_PRESETS: dict[str, TinySpec] = {
    # rope_theta=10: with Qwen2.5-VL's base (1e6) an image token's row and column get only rotary phases of at
    # most 0.03 rad per grid step (mrope gives height and width the lowest frequencies), and a randomly initialised
    # model never learned where things are: 100 SFT steps on "which quadrant is the white square in" (112 px, a 4x4
    # token grid) stayed at the prior (held-out loss 0.70, ln 4 / 2 = 0.69) with base 1e6, reached 0.20 with 100
    # and 0.01 with 10, while a colour question (no position needed) reached 0.0006 at 1e6 (measured 2026-12-02).
    # Not reproduced on 2026-12-06 by bench/learnability.py's `position` probe (16 and 32 px squares, 150 steps:
    # 0.273 and 0.414 against a chance of 0.25); base 10 stays as the better measured of the two.
    # At 10 the slowest frequency turns once every ~60 tokens (farther text positions are told apart only by
    # the faster ones together); what that costs on long text was not measured.
    "small": TinySpec(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=2, vision_depth=4, vision_hidden_size=192, vision_num_heads=3,
                      rope_theta=10.0),
}


def preset_spec(source: str) -> TinySpec:
    """The default dimensions of the Qwen2.5-VL preset named `source` (`tiny` or a `SIZE_PRESETS` name)."""
    return SIZE_PRESETS.get(source, TinySpec())


def build_tokenizer(spec: TinySpec):
    """The Qwen2.5-VL tiny tokenizer: a BPE trained offline, wrapped as `Qwen2Tokenizer`."""
    from transformers import Qwen2Tokenizer

    return train_tokenizer(spec, QWEN2_5_VL_SPECIAL_TOKENS, _NOT_SPECIAL, Qwen2Tokenizer, QWEN2_5_VL_CHAT_TEMPLATE)


def train_tokenizer(spec: TinySpec, special_tokens: Sequence[str], not_special: Collection[str], tokenizer_cls,
                    chat_template: str):
    """Train a byte-level BPE with the Qwen2 split pattern on the built-in corpus; wrap it as `tokenizer_cls`
    with `special_tokens` added right after the BPE vocabulary (those in `not_special` as ordinary tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    n_bpe = spec.vocab_size - len(special_tokens)
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(tokenizer_corpus(spec.seed), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = tokenizer_cls(vocab=state["vocab"], merges=merges, unk_token=None, bos_token=None,
                              eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
                              model_max_length=32768, clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=t not in not_special, normalized=False) for t in special_tokens])
    tokenizer.chat_template = chat_template
    return tokenizer


def build_processor(tokenizer, min_pixels: int, max_pixels: int):
    """The stock Qwen2.5-VL processor around `tokenizer`."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    # The video default pixel cap changed in transformers 5.22; pass it explicitly so runs are comparable.
    video_processor = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels, cap_pixels_per_frame=False)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                               chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def build_config(spec: TinySpec, tokenizer):
    """A `Qwen2_5_VLConfig` at toy size whose special-token ids match `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    head_dim = spec.hidden_size // spec.num_attention_heads
    # mrope splits head_dim/2 rotary frequencies over (temporal, height, width).
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4 + half // 8), half // 4 + half // 8, half // 4 + half // 8]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_5_VL_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(  # noqa: C408 (mirrors the config keyword names)
            vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=8192, max_window_layers=spec.num_hidden_layers,
            rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta or 1_000_000.0,
                             "mrope_section": mrope_section},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=True,
        ),
        vision_config=dict(  # noqa: C408
            depth=spec.vision_depth, hidden_size=spec.vision_hidden_size, intermediate_size=2 * spec.vision_hidden_size,
            num_heads=spec.vision_num_heads, out_hidden_size=spec.hidden_size, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[spec.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_checkpoint(spec: TinySpec, out_dir: Path, family: BackboneFamily | None = None) -> Path:
    """Build the tiny model, tokenizer and processor of `family` (default Qwen2.5-VL) from `spec` and save them
    as a HF directory."""
    from transformers import set_seed

    from vst_vla.families import get_family

    family = family or get_family("qwen2_5_vl")
    tokenizer = family.build_tokenizer(spec)
    processor = family.build_processor(tokenizer, spec.min_pixels, spec.max_pixels)
    config = family.build_config(spec, tokenizer)
    set_seed(spec.seed)
    model = family.model_class()._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                            tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    # Qwen2.5-VL's marker keeps its original bytes (the cache key and checkpoint are unchanged by the families).
    marker = spec.key_fields() if family.name == "qwen2_5_vl" else {**spec.key_fields(), "family": family.name}
    (out_dir / "vst_vla_tiny.json").write_text(json.dumps(marker, indent=2))
    return out_dir


def tiny_checkpoint(spec: TinySpec | None = None, family: str = "qwen2_5_vl") -> Path:
    """Path of the cached tiny checkpoint of `family` for `spec`, building it (atomically) when it is not there yet."""
    from vst_vla.families import get_family

    spec = spec or TinySpec()
    backbone_family = get_family(family)
    final = cache_dir() / f"tiny-{backbone_family.name}-{backbone_family.tiny_cache_key(spec)}"
    if (final / "vst_vla_tiny.json").is_file():
        return final
    log.info("building the tiny %s preset into %s", backbone_family.label, final)
    # Built in a temporary sibling and renamed, so a killed build never leaves a half-written cache entry.
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        build_tiny_checkpoint(spec, tmp, backbone_family)
        reset_modes(tmp)  # mkdtemp (0700) and safetensors (0600) ignore the umask; the cache is read by other users
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; its build is identical
            if not (final / "vst_vla_tiny.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
