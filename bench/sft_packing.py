"""Packed SFT vs TRL's SFTTrainer: real (non-pad) tokens per second on the same samples, side by side.

Both train the tiny Qwen2.5-VL for one epoch over the same synthetic spatial samples (varied lengths, one to
four images, a share of chain-of-thought answers) with loss on assistant tokens only. TRL runs with its default
vision collator (padded batches; it refuses packing for vision data) and `assistant_only_loss=True`; ours packs
samples into `--pack-tokens` sequences, `--packs-per-step` of them per step, through the collator and attention
`vst-vla sft` uses (`sdpa_varlen` on sdpa: no dense mask). Prints each one's real tokens/s and pad fraction, and the ratio.

    .venv/bin/python bench/sft_packing.py [--samples 96] [--batch 8] [--pack-tokens 512] [--packs-per-step 4]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from spatial_tuning.packing import SFTDataset, pack_samples
from spatial_tuning.sft_tokenize import token_counts
from spatial_tuning.sft_toy import toy_spatial_samples
from spatial_tuning.sft_trainer import SpatialSFTTrainer
from vst_vla.backbone import load_backbone

log = logging.getLogger("bench.sft_packing")


class CountingCollator:
    """Wraps a collator and counts real and padded tokens of every batch it builds."""

    def __init__(self, collator, pad_token_id: int) -> None:
        self.collator, self.pad_token_id, self.real, self.total = collator, pad_token_id, 0, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.total += int(batch["input_ids"].numel())
        self.real += int((batch["input_ids"] != self.pad_token_id).sum())  # the chat template never emits the pad
        return batch


def _common_args(out: str, batch: int, steps: int, overrides: dict | None = None) -> dict:
    """TrainingArguments shared by both trainers; `overrides` (device, bf16, checkpointing) win."""
    return {"output_dir": out, "per_device_train_batch_size": batch, "max_steps": steps, "learning_rate": 1e-4,
            "lr_scheduler_type": "constant", "logging_steps": 10_000, "save_strategy": "no", "report_to": [],
            "use_cpu": True, "dataloader_num_workers": 0, "remove_unused_columns": False, "disable_tqdm": True,
            "seed": 0, **(overrides or {})}


def run_packed(model, processor, samples, pack_tokens: int, packs_per_step: int,
               overrides: dict | None = None) -> dict:
    """Our packed SFT (SpatialSFTTrainer + the collator `vst-vla sft` builds: varlen attention, one row per
    batch, on sdpa and flash alike) over every sample once."""
    from transformers import TrainingArguments

    from spatial_tuning.sft import build_collator

    packs = pack_samples(token_counts(samples, processor), pack_tokens)
    pad_id = processor.tokenizer.pad_token_id
    collator = CountingCollator(build_collator(model, processor, packing=True), pad_id)
    steps = -(-len(packs) // packs_per_step)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(**_common_args(out, packs_per_step, steps, overrides))
        trainer = SpatialSFTTrainer(model=model, args=args, train_dataset=SFTDataset(samples, processor, packs),
                                    data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"name": "packed (ours)", "seconds": seconds, "real": collator.real, "total": collator.total,
            "steps": steps}


def run_trl(model, processor, samples, batch: int, overrides: dict | None = None) -> dict:
    """TRL's SFTTrainer with its default vision collator and assistant_only_loss=True."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"messages": s.messages(), "images": s.pil_images()} for s in samples]
    steps = -(-len(rows) // batch)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**{"bf16": False, **_common_args(out, batch, steps, overrides)}, assistant_only_loss=True,
                         max_length=None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=processor)
        trainer.data_collator = collator = CountingCollator(trainer.data_collator, processor.tokenizer.pad_token_id)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"name": "TRL SFTTrainer", "seconds": seconds, "real": collator.real, "total": collator.total,
            "steps": steps}


def _report(result: dict) -> str:
    pad = 1 - result["real"] / max(1, result["total"])
    return (f"{result['name']:>16}: {result['real'] / result['seconds']:8.0f} real tokens/s  "
            f"({result['real']} real / {result['total']} total tokens, pad fraction {pad:.1%}, "
            f"{result['steps']} steps, {result['seconds']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8, help="TRL per-device batch size (samples)")
    parser.add_argument("--pack-tokens", type=int, default=512, help="our token budget per pack")
    parser.add_argument("--packs-per-step", type=int, default=4, help="our per-device batch size (packs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (alternating); the fastest counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    base, processor = load_backbone({"source": "tiny", "device": "cpu"})
    samples = toy_spatial_samples(args.samples, seed=0, max_images=4, thought_fraction=0.4)
    # Alternate the two and keep each one's fastest run, so warm-up and a busy machine hit both alike.
    trl_runs, our_runs = [], []
    for _ in range(args.repeats):
        trl_runs.append(run_trl(copy.deepcopy(base), processor, samples, args.batch))
        our_runs.append(run_packed(copy.deepcopy(base), processor, samples, args.pack_tokens, args.packs_per_step))
    trl_result = min(trl_runs, key=lambda r: r["seconds"])
    ours = min(our_runs, key=lambda r: r["seconds"])
    if ours["real"] != trl_result["real"]:
        # Same samples; TRL's training template also supervises the "\n" after <|im_end|>, which is not a padding
        # difference: report it so the token counts can be compared.
        print(f"note: real-token counts differ ({ours['real']} vs {trl_result['real']}): chat-template details")
    print(f"{args.samples} samples, tiny Qwen2.5-VL on CPU ({args.threads} thread(s))")
    print(_report(trl_result))
    print(_report(ours))
    ratio = (ours["real"] / ours["seconds"]) / (trl_result["real"] / trl_result["seconds"])
    print(f"packed / TRL real-token throughput ratio: {ratio:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
