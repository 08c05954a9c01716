"""`vst-vla vla`: train a VST-VLA policy on a LeRobot dataset with transformers' `Trainer`.

The dataset is read with `delta_timestamps` action chunks of the head's `chunk_size`; images are augmented per
batch (random resized crop, colour jitter) with draws seeded by the batch's position in the run; the backbone is
fully fine-tuned, LoRA-adapted or frozen (vision encoder frozen by default). Checkpoints are policy directories
under `<out>/checkpoints/checkpoint-N/`; by default (`train.resume=auto`) rerunning the same command continues
from the latest complete one and ends with the weights of an uninterrupted run (vst_vla/checkpoints.py). The
final policy is written atomically to `<out>/policy/`, the run's first and last loss to `train_metrics.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model
from torch.utils.data import default_collate
from transformers import Trainer, TrainingArguments

from policies.configuration_vst_vla import VSTVLAConfig
from policies.data import (
    SeededImageAugmentation,
    dataset_stats,
    make_image_augmentation,
    open_dataset,
    set_features,
)
from policies.loading import LoadedPolicy, load_policy, new_policy, save_policy
from vst_vla.atomic import write_json
from vst_vla.checkpoints import (
    MarkCheckpointComplete,
    remove_incomplete_checkpoints,
    resolve_resume,
    train_or_restore,
)
from vst_vla.errors import UserError
from vst_vla.hydra_run import resolve_out, setup_torch

log = logging.getLogger(__name__)


class PolicyTrainer(Trainer):
    """`Trainer` for a LeRobot policy: batches are augmented then pre-processed, checkpoints are policy dirs."""

    def __init__(self, *args, loaded: LoadedPolicy, augmentation: SeededImageAugmentation | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loaded = loaded
        self.augmentation = augmentation
        self._micro_batch_at = (-1, 0)  # (optimizer step, micro-batch index within it)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.augmentation is not None:
            step, micro = self._micro_batch_at
            micro = micro + 1 if step == self.state.global_step else 0
            self._micro_batch_at = (self.state.global_step, micro)
            inputs = self.augmentation(inputs, step=self.state.global_step, micro_batch=micro,
                                       process=self.args.process_index)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, info = model(self.loaded.preprocessor(inputs))
        return (loss, info) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.loaded.save_pretrained(Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_model(model or self.model, str(Path(resume_from_checkpoint) / "model.safetensors"), strict=True)


def policy_config(cfg: DictConfig) -> VSTVLAConfig:
    """The VSTVLAConfig from the composed Hydra config (`head` group, policy keys, `model` group)."""
    head = OmegaConf.to_container(cfg.head, resolve=True)
    target = head.pop("_target_")
    head.pop("name", None)
    return VSTVLAConfig(
        head=target, backbone=str(cfg.model.source), device=str(cfg.trainer.device),
        backbone_dtype=str(cfg.model.dtype), attn_implementation=str(cfg.model.attn_implementation),
        image_size=int(cfg.image_size), use_state=bool(cfg.use_state), finetune=str(cfg.finetune),
        freeze_vision_encoder=bool(cfg.freeze_vision_encoder), lora_rank=int(cfg.lora.rank),
        lora_alpha=int(cfg.lora.alpha), prompt_template=str(cfg.prompt_template), **head)


def build_policy(cfg: DictConfig, dataset_root: Path) -> tuple[LoadedPolicy, Any]:
    """A new policy (or `init_policy` to fine-tune) and the chunked training dataset."""
    from vst_vla.backbone import load_backbone

    if cfg.init_policy:
        loaded = load_policy(cfg.init_policy, device=str(cfg.trainer.device))
        config = set_features(loaded.config, open_dataset(dataset_root).meta.features)  # must match
    else:
        config = set_features(policy_config(cfg), open_dataset(dataset_root).meta.features)
        loaded = None
    dataset = open_dataset(dataset_root, config)
    if loaded is None:
        model_cfg = {**OmegaConf.to_container(cfg.model, resolve=True), "device": "cpu"}
        loaded = new_policy(config, dataset_stats(dataset), backbone=load_backbone(model_cfg))
    return loaded, dataset


def training_augmentation(cfg: DictConfig, config: VSTVLAConfig) -> SeededImageAugmentation | None:
    """The per-batch image augmentation of `cfg.augment` (None when disabled), seeded by `train.seed`."""
    if not cfg.augment.enabled:
        return None
    transform = make_image_augmentation(config.image_size, **cfg.augment.params)
    return SeededImageAugmentation(transform, list(config.image_features), seed=int(cfg.train.seed))


def training_arguments(cfg: DictConfig, out: Path) -> TrainingArguments:
    t, trainer = cfg.train, cfg.trainer
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), max_steps=int(t.max_steps), learning_rate=float(t.learning_rate),
        weight_decay=float(t.weight_decay), warmup_steps=int(t.warmup_steps), lr_scheduler_type=str(t.lr_scheduler),
        max_grad_norm=float(t.max_grad_norm), per_device_train_batch_size=int(trainer.per_device_train_batch_size),
        gradient_accumulation_steps=int(trainer.gradient_accumulation_steps), logging_steps=int(trainer.logging_steps),
        save_steps=int(t.save_steps), save_total_limit=2, seed=int(t.seed), bf16=bool(trainer.bf16),
        use_cpu=str(trainer.device) == "cpu", dataloader_num_workers=int(trainer.dataloader_num_workers),
        remove_unused_columns=False, report_to=list(t.report_to), disable_tqdm=False)


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint `train.resume` (auto | true | false | path) continues from under `<out>/checkpoints`."""
    return resolve_resume(cfg.train.resume, out / "checkpoints", final_artifact=out / "policy", key="train.resume")


def run(cfg: DictConfig) -> Path:
    """Train and save the policy; returns the policy directory."""
    if OmegaConf.is_missing(cfg, "dataset_root") or not cfg.dataset_root:
        raise UserError("dataset_root=PATH is required: a LeRobot dataset folder (e.g. from `vst-vla collect`)")
    setup_torch(cfg)
    out = resolve_out(cfg, "output_dir")
    resume = resume_checkpoint(cfg, out)  # before loading anything: a setting that cannot work fails at once
    remove_incomplete_checkpoints(out / "checkpoints")
    torch.manual_seed(int(cfg.train.seed))
    loaded, dataset = build_policy(cfg, Path(cfg.dataset_root))
    log.info("training vst_vla head=%s on %s (%d frames, %d episodes)", loaded.config.head, cfg.dataset_root,
             dataset.num_frames, dataset.num_episodes)
    trainer = PolicyTrainer(model=loaded.policy, args=training_arguments(cfg, out), train_dataset=dataset,
                            data_collator=default_collate, callbacks=[MarkCheckpointComplete()], loaded=loaded,
                            augmentation=training_augmentation(cfg, loaded.config))
    train_or_restore(trainer, resume, int(cfg.train.max_steps))
    loaded.policy.eval()
    policy_dir = save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, out / "policy")
    # The log history comes back with a resumed checkpoint, so these are the whole run's first and last loss.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    write_json(out / "train_metrics.json", {"head": loaded.config.head, "steps": trainer.state.global_step,
                                            "first_loss": losses[0] if losses else None,
                                            "last_loss": losses[-1] if losses else None,
                                            "resumed_from": resume, "policy_dir": str(policy_dir)})
    return policy_dir
