"""`vst-vla vla`: train a VST-VLA policy on a LeRobot dataset with transformers' `Trainer`.

The dataset is read with `delta_timestamps` action chunks of the head's `chunk_size`; images are augmented
(random resized crop, colour jitter); the backbone is fully fine-tuned, LoRA-adapted or frozen (vision encoder
frozen by default). Checkpoints are policy directories under `<out>/checkpoints/checkpoint-N/` (resume with
`train.resume=true` or a checkpoint path); the final policy is written atomically to `<out>/policy/`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model
from torch.utils.data import default_collate
from transformers import Trainer, TrainerCallback, TrainingArguments

from policies.configuration_vst_vla import VSTVLAConfig
from policies.data import dataset_stats, make_image_augmentation, open_dataset, set_features
from policies.loading import LoadedPolicy, load_policy, new_policy, save_policy
from vst_vla.atomic import is_complete, mark_complete, write_json
from vst_vla.errors import UserError
from vst_vla.hydra_run import resolve_out, setup_torch

log = logging.getLogger(__name__)


class PolicyTrainer(Trainer):
    """`Trainer` for a LeRobot policy: the pre-processor runs on each batch, checkpoints are policy dirs."""

    def __init__(self, *args, loaded: LoadedPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self.loaded = loaded

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, info = model(self.loaded.preprocessor(inputs))
        return (loss, info) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.loaded.save_pretrained(Path(output_dir or self.args.output_dir))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        # Trainer writes checkpoints in place; the marker, written last, is what makes one resumable.
        mark_complete(Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_model(model or self.model, str(Path(resume_from_checkpoint) / "model.safetensors"), strict=True)


class LossHistory(TrainerCallback):
    """Keeps the logged losses so the run can report its first and last loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


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
    """A new policy (or `init_policy` to fine-tune) and the chunked, augmented training dataset."""
    from vst_vla.backbone import load_backbone

    if cfg.init_policy:
        loaded = load_policy(cfg.init_policy, device=str(cfg.trainer.device))
        config = set_features(loaded.config, open_dataset(dataset_root).meta.features)  # must match
    else:
        config = set_features(policy_config(cfg), open_dataset(dataset_root).meta.features)
        loaded = None
    augment = make_image_augmentation(config.image_size, **cfg.augment.params) if cfg.augment.enabled else None
    dataset = open_dataset(dataset_root, config, image_transforms=augment)
    if loaded is None:
        model_cfg = {**OmegaConf.to_container(cfg.model, resolve=True), "device": "cpu"}
        loaded = new_policy(config, dataset_stats(dataset), backbone=load_backbone(model_cfg))
    return loaded, dataset


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


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | bool | None:
    """`train.resume`: false, true (the latest complete checkpoint under <out>/checkpoints) or a path."""
    resume = cfg.train.resume
    if resume in (None, False):
        return None
    if resume is True:
        found = sorted((p for p in (out / "checkpoints").glob("checkpoint-*") if is_complete(p)),
                       key=lambda p: int(p.name.split("-")[-1]))
        if not found:
            raise FileNotFoundError(f"train.resume=true but {out}/checkpoints has no complete checkpoint-*")
        return str(found[-1])
    return str(resume)


def run(cfg: DictConfig) -> Path:
    """Train and save the policy; returns the policy directory."""
    if OmegaConf.is_missing(cfg, "dataset_root") or not cfg.dataset_root:
        raise UserError("dataset_root=PATH is required: a LeRobot dataset folder (e.g. from `vst-vla collect`)")
    setup_torch(cfg)
    out = resolve_out(cfg, "output_dir")
    torch.manual_seed(int(cfg.train.seed))
    loaded, dataset = build_policy(cfg, Path(cfg.dataset_root))
    log.info("training vst_vla head=%s on %s (%d frames, %d episodes)", loaded.config.head, cfg.dataset_root,
             dataset.num_frames, dataset.num_episodes)
    history = LossHistory()
    trainer = PolicyTrainer(model=loaded.policy, args=training_arguments(cfg, out), train_dataset=dataset,
                            data_collator=default_collate, callbacks=[history], loaded=loaded)
    trainer.train(resume_from_checkpoint=resume_checkpoint(cfg, out))
    loaded.policy.eval()
    policy_dir = save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, out / "policy")
    write_json(out / "train_metrics.json", {"head": loaded.config.head, "steps": trainer.state.global_step,
                                            "first_loss": history.losses[0] if history.losses else None,
                                            "last_loss": history.losses[-1] if history.losses else None,
                                            "policy_dir": str(policy_dir)})
    return policy_dir
