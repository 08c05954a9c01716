"""The SFT-loss memory section of `bench/real_size.py`: one training step on the fullest pack with each `loss.impl`
(`spatial_tuning.sft_loss`), side by side: the plain path (full logits), our chunked linear + cross-entropy, and
liger-kernel's fused one where it runs (CUDA, installed).

Memory is measured two ways: the bytes of activations kept for the backward pass (saved-tensor hooks, any device;
parameters excluded, each storage counted once) and, on CUDA, the step's peak allocation above the weights
(`torch.cuda.max_memory_allocated`). The loss of every implementation is printed against the plain one.
"""

from __future__ import annotations

import copy
import gc
import time

import torch
from real_size_model import synchronize


class SavedActivations:
    """Counts the bytes of the tensors autograd keeps for backward inside the block (parameters excluded)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.parameters and key not in self.seen:
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def fullest_pack(samples, processor, pack_tokens: int, model) -> dict:
    """The collated batch of the fullest pack of `samples` under `pack_tokens` (one row, varlen positions)."""
    from spatial_tuning.packing import SFTDataset, pack_samples
    from spatial_tuning.sft import build_collator
    from spatial_tuning.sft_tokenize import token_counts

    counts = token_counts(samples, processor)
    packs = pack_samples(counts, pack_tokens)
    best = max(packs, key=lambda pack: sum(counts[i] for i in pack))
    return build_collator(model, processor, packing=True)([SFTDataset(samples, processor, [best])[0]])


def _one_step(model, batch: dict, impl: str, device: str) -> dict:
    """One forward + backward of `batch` with the loss computed by `impl`; memory, time and loss."""
    from spatial_tuning.sft_loss import remove_linear_cross_entropy, use_linear_cross_entropy
    from spatial_tuning.sft_trainer import causal_lm_loss

    if impl != "plain":
        use_linear_cross_entropy(model, impl)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    labels = inputs.pop("labels")
    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    weights = torch.cuda.memory_allocated() if cuda else 0
    start = time.perf_counter()
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda), SavedActivations(model) as saved:
            loss = causal_lm_loss(model(**inputs), labels) if impl == "plain" else model(**inputs, labels=labels).loss
        loss.backward()
        synchronize(device)
        result = {"loss": float(loss.detach()), "seconds": time.perf_counter() - start, "saved_gb": saved.bytes / 1e9}
        if cuda:
            result["peak_gb"] = (torch.cuda.max_memory_allocated() - weights) / 1e9
    except torch.OutOfMemoryError as err:
        result = {"error": f"out of memory: {str(err).splitlines()[0][:160]}"}
    finally:
        remove_linear_cross_entropy(model)
        model.zero_grad(set_to_none=True)
        loss = None
        gc.collect()
    return result


def compare_loss_memory(base, processor, samples, pack_tokens: int, device: str, checkpointing: bool) -> dict:
    """One forward + backward of the fullest pack per loss implementation that runs here (on a copy of `base`)."""
    from spatial_tuning.sft_loss import liger_available

    model = copy.deepcopy(base).train()
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    batch = fullest_pack(samples, processor, pack_tokens, model)  # switches the copy to varlen attention
    impls = ["plain", "chunked"] + (["liger"] if device.startswith("cuda") and liger_available() else [])
    results: dict = {"tokens": int(batch["input_ids"].numel()), "vocab": int(model.lm_head.weight.shape[0])}
    for impl in impls:
        results[impl] = _one_step(model, batch, impl, device)
    del model
    gc.collect()
    return results


def loss_memory_lines(results: dict, device_label: str) -> list[str]:
    """Plain vs chunked (vs liger) side by side: saved activations, CUDA peak, time, loss vs plain."""
    lines = [(f"  {'loss.impl':<10}{'saved act. GB':>15}{'peak GB':>10}{'step s':>9}{'loss':>10}{'vs plain':>10}"
              f"   ({results['tokens']} tokens x {results['vocab']} vocabulary, {device_label})")]
    plain = results.get("plain", {})
    for impl in ("plain", "chunked", "liger"):
        r = results.get(impl)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"  {impl:<10} FAILED: {r['error']}")
            continue
        peak = f"{r['peak_gb']:10.2f}" if "peak_gb" in r else f"{'-':>10}"
        diff = f"{abs(r['loss'] - plain['loss']) / abs(plain['loss']):10.1e}" if "loss" in plain else f"{'-':>10}"
        lines.append(f"  {impl:<10}{r['saved_gb']:15.3f}{peak}{r['seconds']:9.2f}{r['loss']:10.4f}{diff}")
    return lines


def loss_section(backbone, settings, device: str, label: str) -> dict:
    """The `[loss]` section: the SFT comparison's samples (`settings`: an `SFTSettings`), printed as it finishes."""
    from spatial_tuning.sft_toy import toy_spatial_samples

    samples = toy_spatial_samples(settings.samples, seed=0, image_size=settings.image_size,
                                  max_images=settings.max_images, thought_fraction=0.4)
    print(f"\n[loss] one forward + backward of the fullest pack (<= {settings.pack_tokens} tokens) per sft "
          f"loss.impl; gradient checkpointing {'on' if settings.gradient_checkpointing else 'off'}", flush=True)
    results = compare_loss_memory(backbone[0], backbone[1], samples, settings.pack_tokens, device,
                                  settings.gradient_checkpointing)
    print("\n".join(loss_memory_lines(results, label)), flush=True)
    return results
