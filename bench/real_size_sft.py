"""The SFT section of `bench/real_size.py`: packed SFT vs TRL's `SFTTrainer` on the same samples, with MFU.

Both train a fresh copy of the backbone over every sample once (the same toy spatial samples: one to four images
at the preset's image size, a share of chain-of-thought answers). Ours goes through `vst-vla sft`'s collator
(packs of `pack_tokens`, `sdpa_varlen` attention without flash-attn); TRL uses its vision collator (padded
batches of `trl_batch` samples, `assistant_only_loss=True`). Real (non-pad) tokens per second decide.
"""

from __future__ import annotations

import copy
import gc
import logging
from dataclasses import dataclass

import torch
from real_size_model import count_parameters, model_flops_utilisation
from sft_packing import run_packed, run_trl

log = logging.getLogger("bench.real_size_sft")


@dataclass(frozen=True)
class SFTSettings:
    """What the SFT comparison trains on, and how."""

    samples: int
    image_size: int
    max_images: int
    pack_tokens: int
    packs_per_step: int
    trl_batch: int
    gradient_checkpointing: bool


def _training_overrides(device: str, settings: SFTSettings) -> dict:
    cuda = device.startswith("cuda")
    # Loader workers stay at 0 for both trainers: the token-counting collators must run in this process.
    overrides = {"use_cpu": not cuda, "bf16": cuda}
    if settings.gradient_checkpointing:
        overrides.update(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    return overrides


def _run(name: str, fn, base, device: str) -> dict:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = copy.deepcopy(base)
    try:
        result = fn(model)
        result["tokens_per_s"] = result["real"] / result["seconds"]
        if device.startswith("cuda"):
            result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except torch.OutOfMemoryError as err:
        result = {"name": name, "error": f"out of memory: {str(err).splitlines()[0][:200]}"}
    finally:
        del model
        gc.collect()
    return result


@torch.no_grad()
def packed_exactness(model, processor, samples, device: str) -> dict:
    """Summed next-token loss of `samples` packed in one row (`sdpa_varlen`) vs run one by one (stock sdpa),
    on this device and dtype: the packed path must not change what is learned."""
    from spatial_tuning.packed_attention import use_varlen_attention
    from spatial_tuning.packing import MropePositions, PackedCollator, SFTDataset

    encoded = [item[0] for item in SFTDataset(samples, processor)]
    collate = PackedCollator(MropePositions(model))

    def summed_loss(batch: dict) -> float:
        labels = batch.pop("labels").to(device)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logits = model(**inputs).logits.float()
        return torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="sum").item()

    original = model.config.text_config._attn_implementation
    model.eval()
    one_by_one = sum(summed_loss(collate([[e]])) for e in encoded)
    implementation = use_varlen_attention(model)
    try:
        packed = summed_loss(collate([encoded]))
    finally:
        model.set_attn_implementation({"text_config": original})
    return {"attention": implementation, "packed": packed, "one_by_one": one_by_one,
            "relative_difference": abs(packed - one_by_one) / max(abs(one_by_one), 1e-12)}


def compare_sft(base, processor, device: str, settings: SFTSettings, peak: float | None) -> dict:
    """Packed vs TRL results (tokens/s, pad fraction, MFU, peak memory) and their ratio."""
    from spatial_tuning.sft_toy import toy_spatial_samples

    samples = toy_spatial_samples(settings.samples, seed=0, image_size=settings.image_size,
                                  max_images=settings.max_images, thought_fraction=0.4)
    overrides = _training_overrides(device, settings)
    params = count_parameters(base)
    # One untimed packed step first: the device's one-off costs (kernel selection, allocator growth) would
    # otherwise land on whichever trainer runs first.
    _run("warm-up", lambda m: run_packed(m, processor, samples[:2], settings.pack_tokens, 1, overrides), base, device)
    results = {
        "exactness": packed_exactness(base, processor, samples[:4], device),
        "packed": _run("packed (ours)", lambda m: run_packed(m, processor, samples, settings.pack_tokens,
                                                             settings.packs_per_step, overrides), base, device),
        "trl": _run("TRL SFTTrainer", lambda m: run_trl(m, processor, samples, settings.trl_batch, overrides),
                    base, device),
    }
    for key in ("packed", "trl"):
        result = results[key]
        if "error" not in result:
            result["pad_fraction"] = 1 - result["real"] / max(1, result["total"])
            result["mfu"] = model_flops_utilisation(params, result["real"], result["seconds"], peak)
    if "error" not in results["packed"] and "error" not in results["trl"]:
        results["ratio"] = results["packed"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    return results


def sft_lines(results: dict, device_label: str) -> list[str]:
    """Printable lines of the SFT comparison, absolute figures labelled by device."""
    exact = results["exactness"]
    lines = [(f"  packed loss ({exact['attention']}, one row) {exact['packed']:.4f} vs one by one "
             f"{exact['one_by_one']:.4f}: relative difference {exact['relative_difference']:.1e}")]
    for key in ("trl", "packed"):
        r = results[key]
        if "error" in r:
            lines.append(f"  {r['name']:<16} FAILED: {r['error']}")
            continue
        mfu = "n/a (no peak for this device; --peak-tflops)" if r["mfu"] is None else f"{r['mfu']:.1%}"
        memory = f", peak {r['peak_gb']:.1f} GB" if "peak_gb" in r else ""
        lines.append(f"  {r['name']:<16} {r['tokens_per_s']:9.0f} real tokens/s on {device_label}  MFU {mfu}  "
                     f"(pad {r['pad_fraction']:.1%}, {r['steps']} steps, {r['seconds']:.1f} s{memory})")
    if "ratio" in results:
        lines.append(f"  ratio packed / TRL real tokens/s: {results['ratio']:.2f}x (target >= 1.5x at 3B)")
    return lines
