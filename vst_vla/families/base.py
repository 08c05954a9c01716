"""The backbone-family interface and its registry.

A family is one architecture line (Qwen2.5-VL, Qwen3-VL, Qwen3.5) seen through what the stages need from it: how
to build its tiny preset (config at toy size, special tokens, chat template, stock processor), which `model_type`
values in a checkpoint's `config.json` belong to it, per-sample rope positions for packing (the family's own
`get_rope_index`), the hidden size and depth the action heads size themselves by, the vision token ids, and the
backbone pass the VLA policy makes with replaced token embeddings.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vst_vla.tiny import TinySpec

_TINY_PREFIX = "tiny"


class RopePositions:
    """Per-sample 3-D rope positions, computed by the model class's own `get_rope_index` from its config.

    Holds only the config (not the weights), so data-loader workers can carry it cheaply. Works for every Qwen
    family whose inner model exposes `get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw,
    ...)` and `get_vision_position_ids`: each family keeps its own rule (Qwen3-VL interleaves mrope and splits a
    video into timestamped frames).
    """

    def __init__(self, model) -> None:
        inner = getattr(model, "model", model)
        self.config = inner.config
        # Borrow the model's functions so positions follow whatever transformers does for this architecture.
        cls = type(inner)
        self._rope_index = cls.get_rope_index
        self._vision_positions = cls.get_vision_position_ids

    def get_vision_position_ids(self, *args, **kwargs) -> torch.Tensor:
        return self._vision_positions(self, *args, **kwargs)

    def __call__(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[3, L]` mrope positions of one encoded sample."""
        positions, _ = self._rope_index(
            self, encoded["input_ids"][None], mm_token_type_ids=encoded["mm_token_type_ids"][None],
            image_grid_thw=encoded.get("image_grid_thw"), video_grid_thw=encoded.get("video_grid_thw"),
            second_per_grid_ts=encoded.get("second_per_grid_ts"))
        return positions[:, 0]


class BackboneFamily(ABC):
    """One architecture line. Subclasses set the class attributes and the tiny-build methods."""

    name: str  # the family's registry key, e.g. "qwen3_vl"
    label: str  # human name, e.g. "Qwen3-VL"
    model_types: tuple[str, ...]  # `model_type` values of checkpoints in this family
    special_tokens: tuple[str, ...]  # the tiny tokenizer's added tokens, in id order after the BPE vocabulary
    not_special: frozenset[str] = frozenset()  # added tokens that are ordinary (non-special) in the real tokenizer
    # Packing samples into one row needs every layer to respect per-sample boundaries; a family whose layers
    # cannot (on the kernels available) trains on padded batches and says why.
    packing_exact: bool = True
    packing_fallback_reason: str = ""
    build_version: int = 1  # bump when this family's tiny build recipe changes so stale caches are rebuilt

    # --- the tiny preset -----------------------------------------------------------------------------------

    @property
    def tiny_source(self) -> str:
        """The `model.source` value that builds this family's tiny preset."""
        return f"{_TINY_PREFIX}_{self.name}"

    def tiny_cache_key(self, spec: TinySpec) -> str:
        """Hash of the dimensions, seed, family, recipe version and chat template (read from an installed package
        for the newer families, so a changed template rebuilds the preset)."""
        template = hashlib.sha256(self.chat_template().encode()).hexdigest()[:12]
        payload = json.dumps(spec.key_fields(), sort_keys=True) + f"|{self.name}|{self.build_version}|{template}"
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def build_tokenizer(self, spec: TinySpec):
        """The tiny tokenizer: a BPE trained offline with this family's special tokens and chat template."""
        from vst_vla.tiny import train_tokenizer

        return train_tokenizer(spec, self.special_tokens, self.not_special, self.tokenizer_class(),
                               self.chat_template())

    @abstractmethod
    def chat_template(self) -> str:
        """The family's chat template (Jinja), as its released processors carry it."""

    @abstractmethod
    def tokenizer_class(self) -> type:
        """The tokenizer class the family's checkpoints name in `tokenizer_config.json`."""

    @abstractmethod
    def build_processor(self, tokenizer, min_pixels: int, max_pixels: int):
        """The family's stock processor (image and video processors at the family's patch size) around `tokenizer`."""

    @abstractmethod
    def build_config(self, spec: TinySpec, tokenizer):
        """The family's model config at the toy size of `spec`, special-token ids taken from `tokenizer`."""

    @abstractmethod
    def model_class(self) -> type:
        """The `...ForConditionalGeneration` class of the family."""

    # --- what the stages read from a loaded model ----------------------------------------------------------

    def hidden_size(self, config) -> int:
        """Width of the language model's hidden states (what the action heads read)."""
        return int(config.text_config.hidden_size)

    def num_layers(self, config) -> int:
        """Depth of the language model (the flow expert defaults to half of it)."""
        return int(config.text_config.num_hidden_layers)

    def vision_token_ids(self, config) -> dict[str, int]:
        """Image, video and vision-bracket token ids from the model config."""
        names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        return {n: int(getattr(config, n)) for n in names if getattr(config, n, None) is not None}

    def rope_positions(self, model) -> RopePositions:
        """Per-sample rope positions for packing, by this family's own `get_rope_index`."""
        return RopePositions(model)

    def embed_forward(self, model, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, mm_token_type_ids: torch.Tensor,
                      use_cache: bool):
        """The inner model's pass over prompts whose token embeddings were edited (state and query placeholders).

        The default hands both `input_ids` (for the rope index and the image placeholders) and the edited
        embeddings to the inner model, as Qwen2.5-VL accepts.
        """
        return model.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                           mm_token_type_ids=mm_token_type_ids, use_cache=use_cache)


_REGISTRY: dict[str, BackboneFamily] = {}


def register(family: BackboneFamily) -> BackboneFamily:
    """Add `family` to the registry (module import time)."""
    _REGISTRY[family.name] = family
    return family


def families() -> dict[str, BackboneFamily]:
    """Every registered family by name."""
    return dict(_REGISTRY)


def get_family(name: str) -> BackboneFamily:
    """The family called `name`; an unknown name is an error listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone family {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def family_for_model_type(model_type: str | None) -> BackboneFamily | None:
    """The family whose checkpoints carry `model_type` in `config.json`, or None."""
    return next((f for f in _REGISTRY.values() if model_type in f.model_types), None)


def supported_model_types() -> list[str]:
    return sorted(t for f in _REGISTRY.values() for t in f.model_types)


def tiny_family(source: str | None) -> BackboneFamily | None:
    """The family whose tiny preset `source` names (`tiny` and the size presets such as `small` are Qwen2.5-VL's,
    `tiny_<family>` the others'), or None."""
    from vst_vla.tiny import SIZE_PRESETS

    if source == _TINY_PREFIX or source in SIZE_PRESETS:  # the larger presets are Qwen2.5-VL too
        return get_family("qwen2_5_vl")
    return next((f for f in _REGISTRY.values() if source == f.tiny_source), None)


def family_of(model_or_config: Any) -> BackboneFamily:
    """The family of a loaded model (or its config), by `config.model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    family = family_for_model_type(model_type)
    if family is None:
        raise ValueError(f"model_type={model_type!r} belongs to no backbone family; supported: "
                         f"{supported_model_types()}")
    return family
