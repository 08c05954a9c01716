"""`vst-vla info`: what this installation runs on, and whether the configured model loads."""

from __future__ import annotations

import importlib.metadata as md
import platform

import torch
from omegaconf import DictConfig, OmegaConf

from vst_vla.backbone import BackboneConfig, CheckpointError, resolve_source
from vst_vla.runtime import (
    flash_attention_available,
    resolve_attention,
    resolve_device,
    resolve_dtype,
    select_mujoco_renderer,
)

_PACKAGES = ("torch", "torchvision", "transformers", "trl", "accelerate", "peft", "lerobot", "mujoco", "metaworld",
             "gymnasium", "hydra-core", "flash-attn", "vllm")


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def describe_backbone(cfg: DictConfig) -> str:
    """The backbone family `model.source` belongs to (a tiny preset's, or a local checkpoint's), or why unknown."""
    from vst_vla.backbone import CheckpointError, source_family
    from vst_vla.families import get_family, tiny_family

    source = OmegaConf.select(cfg, "model.source", throw_on_missing=False)
    declared = OmegaConf.select(cfg, "model.family", default=None)
    if source in (None, "", "???"):
        named = f"{declared} ({get_family(declared).label})" if declared else "unknown"
        return f"{named}, model.source not set"
    try:
        family = source_family({"source": str(source)})
    except CheckpointError as err:
        return f"unknown ({err})"
    kind = "tiny preset" if tiny_family(str(source)) else "checkpoint"
    return f"{family.name} ({family.label}, {kind} {source})"


def collect_info(cfg: DictConfig | None = None) -> dict[str, str]:
    """Versions, device, dtype, attention kernel and the MuJoCo renderer that works here."""
    model_cfg = cfg.model if cfg is not None and "model" in cfg else {}
    device = resolve_device(model_cfg.get("device", "auto"))
    info = {"python": platform.python_version(), "platform": platform.platform()}
    info.update({name: _version(name) for name in _PACKAGES})
    info["device"] = str(device) + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else "")
    info["cuda available"] = str(torch.cuda.is_available())
    info["dtype"] = str(resolve_dtype(model_cfg.get("dtype", "auto"), device)).replace("torch.", "")
    info["attention"] = resolve_attention(model_cfg.get("attn_implementation", "auto"), device)
    info["flash-attn usable"] = str(flash_attention_available())
    if cfg is not None and "model" in cfg:  # without a model config there is no backbone to name
        info["backbone family"] = describe_backbone(cfg)
    info["torch threads"] = str(torch.get_num_threads())
    try:
        info["mujoco renderer"] = select_mujoco_renderer()
    except RuntimeError as err:
        info["mujoco renderer"] = f"none ({err})"
    return info


def check_model(model_cfg) -> str:
    """Validate the configured backbone cheaply (its folder, config and tokenizer; no weights are read) and
    describe it; raises `CheckpointError` naming the path and what is wrong."""
    if OmegaConf.is_missing(model_cfg, "source"):
        return model_cfg.source  # raises MissingMandatoryValue naming model.source: one line from the command
    if model_cfg.get("source", "tiny") == "tiny":
        return "tiny (a toy-size Qwen2.5-VL, built offline on first use and cached)"
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_source(BackboneConfig.from_any(model_cfg))
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # transformers raises many kinds; the path and the reason are the story
        raise CheckpointError(f"cannot load the config or tokenizer of {path}: {err}") from err
    text = getattr(config, "text_config", config)
    return (f"{path} ({config.model_type}, text hidden {text.hidden_size} x {text.num_hidden_layers} layers, "
            f"{len(tokenizer)} tokens)")


def run(cfg: DictConfig) -> dict[str, str]:
    """Print what this installation runs on, then check the configured model (`model.source`)."""
    info = collect_info(cfg)
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    if cfg is not None and "model" in cfg:
        info["model"] = check_model(cfg.model)
        print(f"{'model'.ljust(width)}  {info['model']}")
    return info
