"""Backbone loading: `load_backbone(cfg) -> (model, processor)`.

Sources: a tiny preset (built offline and cached: `tiny` is Qwen2.5-VL, `tiny_qwen3_vl` and `tiny_qwen3_5` the
other families), or a local directory in Hugging Face format of any family in `vst_vla/families/`: Qwen2.5-VL
3B/7B, the published VST checkpoints (`rayruiyang/VST-{3B,7B}-{SFT,RL}`) once downloaded, Qwen3-VL 2B/4B/8B,
Qwen3.5, or our own saves.
Nothing is fetched from the hub: a source that is not a local directory is an error naming the path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from vst_vla.families import BackboneFamily, family_for_model_type, supported_model_types, tiny_family
from vst_vla.runtime import resolve_attention, resolve_device, resolve_dtype
from vst_vla.tiny import TinySpec, preset_spec, tiny_checkpoint

log = logging.getLogger(__name__)


@dataclass
class BackboneConfig:
    """What `load_backbone` needs; the Hydra `model/` group fills these fields."""

    source: str = "tiny"
    family: str | None = None  # the family the config expects; a checkpoint of another family is logged
    seed: int = 0
    attn_implementation: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None
    tiny: Mapping[str, Any] | None = None

    @classmethod
    def from_any(cls, cfg: BackboneConfig | Mapping[str, Any] | str | Path) -> BackboneConfig:
        if isinstance(cfg, BackboneConfig):
            return cfg
        if isinstance(cfg, (str, Path)):
            return cls(source=str(cfg))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(cfg).items() if k in names})


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the path and what is wrong."""


def tiny_spec(cfg: BackboneConfig) -> TinySpec:
    """The preset's dimensions (`tiny`, or a size preset such as `small`), with the config's overrides."""
    extra = dict(cfg.tiny or {})
    if cfg.min_pixels is not None:
        extra["min_pixels"] = cfg.min_pixels
    if cfg.max_pixels is not None:
        extra["max_pixels"] = cfg.max_pixels
    return replace(preset_spec(str(cfg.source)), seed=cfg.seed, **extra)


def resolve_source(cfg: BackboneConfig) -> Path:
    """The local checkpoint directory for `cfg.source` (building the tiny preset when asked for)."""
    family = tiny_family(cfg.source)
    if family is not None:
        return tiny_checkpoint(tiny_spec(cfg), family.name)
    if cfg.source in (None, "", "???"):
        raise CheckpointError("model.source is not set: pass model.source=/path/to/a/local/checkpoint")
    path = Path(cfg.source).expanduser()
    validate_checkpoint_dir(path)
    return path


def validate_checkpoint_dir(path: Path) -> None:
    """Raise `CheckpointError` naming `path` and the missing or malformed part."""
    if not path.exists():
        hint = " (looks like a hub id: download it first and pass the local directory)" if "/" in str(path) and not str(path).startswith(("/", ".", "~")) else ""
        raise CheckpointError(f"checkpoint directory {path} does not exist{hint}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint directory {path} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from err
    model_type = config.get("model_type")
    if family_for_model_type(model_type) is None:
        raise CheckpointError(f"{config_file}: model_type={model_type!r}, expected one of {supported_model_types()}")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        raise CheckpointError(f"checkpoint directory {path} has no *.safetensors weights")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json")
    missing = [f for f in tokenizer_files if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint directory {path} is missing tokenizer files: {', '.join(missing)}")


def load_processor(path: Path, cfg: BackboneConfig):
    from transformers import AutoProcessor

    kwargs: dict[str, Any] = {}
    if cfg.min_pixels is not None and cfg.max_pixels is not None and tiny_family(cfg.source) is None:
        kwargs["size"] = {"shortest_edge": int(cfg.min_pixels), "longest_edge": int(cfg.max_pixels)}
    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as err:
        raise CheckpointError(f"cannot load the processor from {path}: {err}") from err


def load_backbone(cfg: BackboneConfig | Mapping[str, Any] | str | Path = "tiny"):
    """Load a backbone of any registered family and its processor. Returns `(model, processor)`.

    `cfg` is a `model/` config (mapping or `BackboneConfig`), or just a source: `"tiny"` or a local directory.
    Attention is flash_attention_2 on CUDA with flash-attn installed, else sdpa; dtype bf16 on GPU, fp32 on CPU.
    """
    from transformers import AutoModelForImageTextToText

    cfg = BackboneConfig.from_any(cfg)
    path = resolve_source(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    attention = resolve_attention(cfg.attn_implementation, device)
    processor = load_processor(path, cfg)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attention)
    except Exception as err:
        raise CheckpointError(f"cannot load model weights from {path}: {err}") from err
    model.to(device)
    family = family_for_model_type(model.config.model_type)
    if cfg.family and cfg.family != family.name:
        log.warning("model.family=%s but %s is a %s checkpoint: loading it as %s", cfg.family, path, family.label,
                    family.label)
    log.info("loaded %s backbone %s (%s, %s, %s, %.1fM params)", family.label, path, device, dtype, attention,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, processor


def source_family(cfg: BackboneConfig | Mapping[str, Any] | str | Path) -> BackboneFamily:
    """The family `cfg.source` belongs to (a tiny preset's, or the local checkpoint's `config.json` model_type)."""
    cfg = BackboneConfig.from_any(cfg)
    family = tiny_family(cfg.source)
    if family is not None:
        return family
    path = Path(cfg.source).expanduser()
    validate_checkpoint_dir(path)
    return family_for_model_type(json.loads((path / "config.json").read_text()).get("model_type"))


def save_backbone(model, processor, out_dir: str | Path) -> Path:
    """Save model and processor as a HF directory that `load_backbone` reads back."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
