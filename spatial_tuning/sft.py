"""`vst-vla sft`: supervised fine-tuning of a Qwen2.5-VL backbone on VST spatial data, packed, on `Trainer`.

Reads `data.train` / `data.eval` (parquet files or directories) through the spatial data reader, trains with
packing (or padded batches with `packing=false`), evaluates the held-out loss before and after, and writes
`<output_dir>/checkpoint-final/`: a Hugging Face directory (model + processor) that `load_backbone` loads.
Intermediate Trainer checkpoints are `<output_dir>/checkpoint-N/` (every `save_steps`); by default (`resume=auto`)
a rerun of the same command continues from the latest complete one (see vst_vla/checkpoints.py).
The same command runs under `torchrun` / `accelerate launch` for DDP or FSDP (configs/accelerate/).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from spatial_tuning.packed_attention import packs_in_one_row, use_varlen_attention
from spatial_tuning.packing import (
    PackedCollator,
    PaddedCollator,
    SFTDataset,
    pack_samples,
    packing_supported,
    rope_positions,
)
from spatial_tuning.sample import SpatialSample
from spatial_tuning.sft_loss import resolve_loss_impl, use_linear_cross_entropy
from spatial_tuning.sft_tokenize import cached_token_counts, describe_labels, encode_sample, token_counts
from spatial_tuning.sft_trainer import (
    SpatialSFTTrainer,
    apply_freezing,
    apply_lora,
    causal_lm_loss,
    merged_model,
)
from vst_vla.atomic import atomic_directory, write_json
from vst_vla.backbone import save_backbone
from vst_vla.checkpoints import (
    MarkCheckpointComplete,
    remove_incomplete_checkpoints,
    resolve_resume,
    train_or_restore,
)
from vst_vla.families import family_of
from vst_vla.hydra_run import resolve_out, setup_torch

log = logging.getLogger(__name__)

FINAL_CHECKPOINT = "checkpoint-final"
EVAL_START_FILE = "eval_loss_start.json"


def load_split(paths: Sequence[str], processor, on_bad_sample: str = "error", limit: int | None = None,
               count_cache: str | Path | None = None, image_root: str | Path | None = None,
               allow_absolute_paths: bool = False) -> tuple[list[SpatialSample], list[int]]:
    """Samples from the data files under `paths`, with their token counts (cached under `count_cache`); image
    paths resolve under `image_root` (default: each file's folder)."""
    from spatial_tuning.readers import load_samples, resolve_files  # the data engine's reader

    samples: list[SpatialSample] = []
    counts: list[int] = []
    for file in resolve_files(list(paths)):
        file_samples = load_samples([file], on_bad_sample=on_bad_sample, image_root=image_root,
                                    allow_absolute_paths=allow_absolute_paths)
        counts += cached_token_counts(file_samples, processor, file, Path(count_cache) if count_cache else None)
        samples += file_samples
    if limit is not None and limit < len(samples):
        # A seeded spread over the whole split: files are often ordered by skill, so the head would be biased.
        keep = sorted(random.Random(0).sample(range(len(samples)), int(limit)))
        samples, counts = [samples[i] for i in keep], [counts[i] for i in keep]
    return samples, counts


def build_dataset(samples: Sequence[SpatialSample], counts: Sequence[int] | None, processor, packing: bool,
                  max_tokens_per_pack: int) -> SFTDataset:
    """One item per pack (packing) or per sample (padded batches)."""
    if not packing:
        return SFTDataset(samples, processor)
    counts = list(counts) if counts is not None else token_counts(samples, processor)
    packs = pack_samples(counts, max_tokens_per_pack)
    fill = sum(counts) / max(1, len(packs) * max_tokens_per_pack)
    log.info("packed %d samples (%d tokens) into %d packs of <= %d tokens (%.0f%% full)", len(samples),
             sum(counts), len(packs), max_tokens_per_pack, 100 * fill)
    return SFTDataset(samples, processor, packs)


def build_collator(model, processor, packing: bool):
    """The packed collator (per-sample mrope positions from the model) or the padded baseline."""
    if packing and family_of(model).packing_exact:  # train_sft logged the fallback when it is not
        # sdpa -> sdpa_varlen (no dense mask); varlen kernels take the whole batch as one row.
        one_row = packs_in_one_row(use_varlen_attention(model))
        return PackedCollator(rope_positions(model), processor.tokenizer.pad_token_id, one_row=one_row)
    return PaddedCollator(processor.tokenizer.pad_token_id)


def training_arguments(cfg: DictConfig, out_dir: Path):
    """`TrainingArguments` from the `sft` config and its `trainer/` group."""
    from transformers import TrainingArguments

    t, o = cfg.trainer, cfg.optim
    eval_enabled = bool(cfg.data.eval)
    return TrainingArguments(
        output_dir=str(out_dir), seed=int(cfg.seed), data_seed=int(cfg.seed),
        per_device_train_batch_size=int(t.per_device_train_batch_size),
        per_device_eval_batch_size=int(t.per_device_train_batch_size),
        gradient_accumulation_steps=int(t.gradient_accumulation_steps),
        learning_rate=float(o.learning_rate), weight_decay=float(o.weight_decay), warmup_steps=float(o.warmup),
        lr_scheduler_type=str(o.lr_scheduler_type), num_train_epochs=float(o.num_train_epochs),
        max_steps=int(o.max_steps), max_grad_norm=float(o.max_grad_norm), optim=str(o.optim),
        bf16=bool(t.bf16), fp16=bool(t.fp16), use_cpu=str(t.device) == "cpu",
        activation_checkpointing=bool(t.gradient_checkpointing),
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        dataloader_num_workers=int(t.dataloader_num_workers), logging_steps=int(t.logging_steps),
        eval_strategy="steps" if eval_enabled and cfg.eval_steps else "no",
        eval_steps=int(cfg.eval_steps) if cfg.eval_steps else None,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=int(cfg.save_steps) if cfg.save_steps else 500,
        save_total_limit=cfg.save_total_limit, report_to=list(cfg.report_to),
        remove_unused_columns=False, prediction_loss_only=True, ddp_find_unused_parameters=cfg.ddp_find_unused_parameters,
        ddp_backend=cfg.ddp_backend, include_num_input_tokens_seen="all" if cfg.packing else "non_padding", disable_tqdm=False,
    )


def prepare_model(model, cfg: DictConfig):
    """Freeze what the config freezes and wrap LoRA adapters; gradient checkpointing is the Trainer's."""
    counts = apply_freezing(model, **OmegaConf.to_container(cfg.freeze))
    if cfg.lora.enabled:
        model = apply_lora(model, r=int(cfg.lora.r), alpha=int(cfg.lora.alpha), dropout=float(cfg.lora.dropout),
                           target_modules=OmegaConf.to_container(cfg.lora.target_modules)
                           if OmegaConf.is_list(cfg.lora.target_modules) else str(cfg.lora.target_modules))
        counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                  "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}
    log.info("parameters: %.2fM trainable, %.2fM frozen", counts["trainable"] / 1e6, counts["frozen"] / 1e6)
    return model


def build_trainer(cfg: DictConfig, model, processor, train: SFTDataset, evaluation: SFTDataset | None,
                  out_dir: Path, callbacks: list | None = None) -> SpatialSFTTrainer:
    """The configured `SpatialSFTTrainer` (the collator is built before LoRA wraps the model)."""
    collator = build_collator(model, processor, bool(cfg.packing))
    loss_func = configure_loss(model, cfg)
    model = prepare_model(model, cfg)
    vision_lr = cfg.optim.vision_learning_rate
    return SpatialSFTTrainer(model=model, args=training_arguments(cfg, out_dir), train_dataset=train,
                             eval_dataset=evaluation, data_collator=collator, processing_class=processor,
                             callbacks=[MarkCheckpointComplete(), *(callbacks or [])],
                             vision_learning_rate=float(vision_lr) if vision_lr else None, compute_loss_func=loss_func)


def configure_loss(model, cfg: DictConfig):
    """Set up `cfg.loss.impl` on `model`; returns the Trainer's `compute_loss_func` (None: the model computes
    its loss itself, without the full logits; see spatial_tuning/sft_loss.py)."""
    loss = cfg.get("loss") or {}
    impl = resolve_loss_impl(str(loss.get("impl", "auto")), next(model.parameters()).device)
    if impl == "plain":
        log.info("sft loss: plain (full logits, then cross-entropy)")
        return causal_lm_loss
    use_linear_cross_entropy(model, impl, int(loss.get("chunk_tokens", 4096)))
    return None


def save_final(trainer: SpatialSFTTrainer, processor, out_dir: Path) -> Path:
    """Write `<out_dir>/checkpoint-final/` atomically (LoRA merged): what the RL stage and the pipeline load."""
    final = out_dir / FINAL_CHECKPOINT
    # Under FSDP the weights are sharded: every process takes part in gathering the full state dict.
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if trainer.is_world_process_zero():
        model = merged_model(trainer.accelerator.unwrap_model(trainer.model))
        with atomic_directory(final, overwrite=True) as tmp:
            if state_dict is None:
                save_backbone(model, processor, tmp)
            else:
                model.save_pretrained(tmp, state_dict=state_dict)
                processor.save_pretrained(tmp)
        log.info("final checkpoint: %s", final)
    trainer.accelerator.wait_for_everyone()
    return final


def train_sft(cfg: DictConfig, model, processor, train_samples: Sequence[SpatialSample],
              eval_samples: Sequence[SpatialSample], train_counts: Sequence[int] | None = None,
              eval_counts: Sequence[int] | None = None, out_dir: Path | None = None,
              callbacks: list | None = None) -> dict[str, Any]:
    """Train on samples already in memory; returns metrics (eval loss before/after, throughput, paths)."""
    out_dir = Path(out_dir or resolve_out(cfg, "output_dir"))
    packing, budget = packing_supported(model, bool(cfg.packing)), int(cfg.max_tokens_per_pack)
    train = build_dataset(train_samples, train_counts, processor, packing, budget)
    evaluation = build_dataset(eval_samples, eval_counts, processor, packing, budget) if eval_samples else None
    log.info("supervised example (%s): %r", train_samples[0].id,
             describe_labels(encode_sample(train_samples[0], processor), processor))
    resume = resume_point(cfg, out_dir)
    remove_incomplete_checkpoints(out_dir)
    trainer = build_trainer(cfg, model, processor, train, evaluation, out_dir, callbacks)
    metrics: dict[str, Any] = {"output_dir": str(out_dir), "packing": packing, "resumed_from": resume}
    if evaluation is not None:
        start = _eval_loss_start(trainer, out_dir, resume)
        if start is not None:
            metrics["eval_loss_start"] = start
    result = train_or_restore(trainer, resume, int(cfg.optim.max_steps))  # None: the checkpoint was at the budget
    if result is not None:
        metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    metrics["global_step"] = int(trainer.state.global_step)
    metrics["train_tokens"] = int(trainer.state.num_input_tokens_seen)
    metrics["train_losses"] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if evaluation is not None:
        metrics["eval_loss_end"] = trainer.evaluate()["eval_loss"]
        if "eval_loss_start" in metrics:
            metrics["eval_loss_ratio"] = metrics["eval_loss_end"] / metrics["eval_loss_start"]
    metrics["checkpoint"] = str(save_final(trainer, processor, out_dir))
    if trainer.is_world_process_zero():
        write_json(out_dir / "sft_metrics.json", metrics)
    return metrics


def _eval_loss_start(trainer: SpatialSFTTrainer, out_dir: Path, resume: str | None) -> float | None:
    """The held-out loss before training: measured on a fresh start and kept beside the checkpoints, so a
    resumed run reports the run's true starting loss."""
    record = out_dir / EVAL_START_FILE
    if resume:
        return json.loads(record.read_text())["eval_loss_start"] if record.is_file() else None
    loss = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        write_json(record, {"eval_loss_start": loss})
    return loss


def resume_point(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint `cfg.resume` (auto | true | false | path) resumes from under `out_dir`, or None."""
    return resolve_resume(cfg.resume, out_dir, final_artifact=out_dir / FINAL_CHECKPOINT, key="resume")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Entry point of `vst-vla sft`."""
    from transformers import set_seed

    from vst_vla.backbone import load_backbone

    setup_torch(cfg)
    set_seed(int(cfg.seed))
    if not cfg.data.train:
        raise ValueError("data.train is empty: pass data.train=[path/to/train.parquet,...] (files or directories)")
    resume_point(cfg, resolve_out(cfg, "output_dir"))  # a resume setting that cannot work fails before loading
    model, processor = load_backbone(cfg.model)
    data = cfg.data
    paths_ok = {"image_root": data.get("image_root"),
                "allow_absolute_paths": bool(data.get("allow_absolute_image_paths", False))}
    train, train_counts = load_split(data.train, processor, data.on_bad_sample, data.max_train_samples,
                                     data.token_count_cache, **paths_ok)
    evaluation, eval_counts = (load_split(data.eval, processor, data.on_bad_sample, data.max_eval_samples,
                                          data.token_count_cache, **paths_ok) if data.eval else ([], []))
    log.info("sft: %d train samples (%d thought), %d eval samples", len(train), sum(s.think for s in train),
             len(evaluation))
    metrics = train_sft(cfg, model, processor, train, evaluation, train_counts, eval_counts)
    if "eval_loss_ratio" in metrics:
        log.info("held-out loss %.4f -> %.4f (%.1f%% of start)", metrics["eval_loss_start"],
                 metrics["eval_loss_end"], 100 * metrics["eval_loss_ratio"])
    if not math.isfinite(metrics.get("train_loss", 0.0)):
        raise RuntimeError(f"training diverged: train_loss={metrics['train_loss']}")
    return metrics
