"""SFT tokenisation: a `SpatialSample` becomes model inputs with labels on the assistant replies only.

Token counts (what packing needs) are computed without running the image processor: the image grid follows from
the image size and the processor's pixel limits, so counting a large data set reads only image headers. Counts
are cached on disk, keyed by the data file's content hash and the processor settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from spatial_tuning.prompts import DEFAULT_SYSTEM_PROMPT, THINK_SYSTEM_PROMPT
from spatial_tuning.sample import SpatialSample
from vst_vla.atomic import write_json
from vst_vla.paths import cache_dir

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_COUNT_RECIPE_VERSION = 1  # bump when the counting rule changes so cached counts are recomputed


class SampleEncodingError(ValueError):
    """A sample that cannot be turned into training inputs; the message names the sample id."""


def chat_text(sample: SpatialSample, processor) -> str:
    """The full conversation as text: VST's system prompt (the think prompt for a `type` containing "thought", else
    the default; spatial_tuning/prompts.py), user turns with image placeholders, assistant replies."""
    return processor.apply_chat_template(sample.messages(), tokenize=False, add_generation_prompt=False)


def assistant_header_ids(processor) -> list[int]:
    """Token ids that open an assistant turn in the chat template (`<|im_start|>assistant\\n`)."""
    return processor.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)


def assistant_labels(input_ids: torch.Tensor, header: Sequence[int], end_id: int) -> torch.Tensor:
    """Labels equal to `input_ids` inside assistant replies (through their `<|im_end|>`), `IGNORE_INDEX` elsewhere."""
    ids = input_ids.tolist()
    labels = [IGNORE_INDEX] * len(ids)
    n, i = len(header), 0
    while i + n <= len(ids):
        if ids[i:i + n] != list(header):
            i += 1
            continue
        j = i + n
        while j < len(ids) and ids[j] != end_id:
            labels[j] = ids[j]
            j += 1
        if j < len(ids):  # the end-of-turn token is a target: the model must learn to stop
            labels[j] = ids[j]
        i = j + 1
    return torch.tensor(labels, dtype=torch.long)


def encode_sample(sample: SpatialSample, processor) -> dict[str, torch.Tensor]:
    """Model inputs for one sample: `input_ids`, `labels`, `mm_token_type_ids` (1-D) and the vision tensors."""
    images = sample.pil_images() or None
    videos = [[_to_array(f) for f in frames] for frames in sample.pil_videos()] or None
    try:
        enc = processor(text=[chat_text(sample, processor)], images=images, videos=videos, return_tensors="pt")
    except Exception as err:
        raise SampleEncodingError(f"sample {sample.id!r}: the processor failed: {err}") from err
    input_ids = enc["input_ids"][0]
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = assistant_labels(input_ids, assistant_header_ids(processor), end_id)
    if not (labels != IGNORE_INDEX).any():
        raise SampleEncodingError(f"sample {sample.id!r} has no assistant reply to train on")
    out = {"input_ids": input_ids, "labels": labels, "mm_token_type_ids": enc["mm_token_type_ids"][0]}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        if key in enc and enc[key] is not None:
            out[key] = enc[key]
    return out


def _to_array(image: Image.Image):
    import numpy as np

    return np.asarray(image)


# --- token counts ----------------------------------------------------------------------------------------


def image_token_count(image_bytes: bytes, processor) -> int:
    """Tokens one image occupies in the language model, from its header-only size and the processor's limits."""
    with Image.open(io.BytesIO(image_bytes)) as image:  # lazy: reads the header, not the pixels
        width, height = image.size
    image_processor = processor.image_processor
    patches = image_processor.get_number_of_image_patches(height, width, {})
    return patches // (image_processor.merge_size ** 2)


def count_tokens(sample: SpatialSample, processor) -> int:
    """The length of `encode_sample(sample)["input_ids"]`, without running the image processor."""
    if sample.videos:  # video frame sampling is the processor's business: count the exact way
        return int(encode_sample(sample, processor)["input_ids"].numel())
    text_ids = processor.tokenizer.encode(chat_text(sample, processor), add_special_tokens=False)
    # Each image is one <|image_pad|> in the template text, expanded by the processor to its grid's token count.
    return len(text_ids) + sum(image_token_count(b, processor) - 1 for b in sample.images)


def processor_fingerprint(processor) -> str:
    """A short hash of everything in the processor (and the system prompts) that changes token counts."""
    ip = processor.image_processor
    tokenizer = processor.tokenizer
    payload = json.dumps({
        "version": _COUNT_RECIPE_VERSION,
        "size": {k: getattr(ip.size, k, None) for k in ("shortest_edge", "longest_edge")},
        "patch": ip.patch_size, "merge": ip.merge_size, "vocab": len(tokenizer),
        "template": processor.chat_template, "class": type(tokenizer).__name__,
        "system_prompts": [DEFAULT_SYSTEM_PROMPT, THINK_SYSTEM_PROMPT],  # a changed prompt changes every count
        "probe": tokenizer.encode("<|im_start|>assistant\nThe red cube is 1.25 m away.<|im_end|>"),
    }, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """Content hash of a data file (streamed, so large parquet files do not load into memory)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def token_counts(samples: Sequence[SpatialSample], processor, desc: str = "counting tokens") -> list[int]:
    """`count_tokens` for every sample, with a progress bar."""
    return [count_tokens(s, processor) for s in tqdm(samples, desc=desc, leave=False, disable=len(samples) < 200)]


def cached_token_counts(samples: Sequence[SpatialSample], processor, data_file: str | Path,
                        cache_root: Path | None = None) -> list[int]:
    """Token counts of the samples read from `data_file`, computed once and reused while file and processor match."""
    root = cache_root or cache_dir() / "sft_token_counts"
    key = f"{file_digest(data_file)}-{processor_fingerprint(processor)}"
    cache_file = root / f"{key}.json"
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if cached.get("ids") == [s.id for s in samples]:
            return [int(c) for c in cached["counts"]]
        log.warning("token-count cache %s does not match the samples of %s; recounting", cache_file, data_file)
    counts = token_counts(samples, processor, desc=f"counting tokens of {Path(data_file).name}")
    write_json(cache_file, {"file": str(data_file), "ids": [s.id for s in samples], "counts": counts})
    return counts


def describe_labels(encoded: dict[str, Any], processor) -> str:
    """The supervised part of an encoded sample, decoded (for logs and checks)."""
    labels = encoded["labels"]
    return processor.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist(), skip_special_tokens=False)
