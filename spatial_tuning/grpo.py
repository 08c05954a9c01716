"""`vst-vla rl`: GRPO / DAPO on rule-checkable spatial samples through TRL's `GRPOTrainer`.

Two reward functions, `accuracy` and `format` (spatial_tuning/rewards.py), weighted 0.5 / 0.5 through
`reward_weights`, so TRL logs each one's mean per step next to the total reward. The think (format) system prompt
goes where `think` says; `prompt.format=vlm3d_reasoner` (default, VST's RL) leaves it off 3D-detection rows
(spatial_tuning/prompts.py). DAPO online filtering (drop
groups whose accuracies are all equal) is not built into TRL 1.16: `DapoGRPOTrainer` reads the group accuracies
right after scoring and removes those groups from the loss (zero advantage, zero loss mask, and the DAPO token
normaliser recomputed over the kept tokens), so they neither push the policy nor dilute the update. Dropped
groups are not re-sampled; the kept fraction is logged as `dapo/kept_group_frac`.

Chat templates with a thinking switch (Qwen3.5's `enable_thinking`) render every prompt with it on when any row
thinks (TRL has one set of template kwargs per run), and both rewards score the assistant reply, the template's
opened `<think>` plus the completion (spatial_tuning/thinking.py).

The budget is `grpo.max_steps`; `grpo.time_limit_s` is only a safety stop, logged and recorded in the summary
when it fires. Trainer checkpoints go to `<output_dir>/trainer/checkpoint-N/` every `grpo.save_steps`; by default
(`resume=auto`) rerunning the same command continues from the latest complete one with the optimizer, scheduler,
RNG states and the prompt order of an uninterrupted run (vst_vla/checkpoints.py). The DAPO filter keeps no state
across steps (each step's groups are judged on their own), so there is none to restore.

Artifact: `<output_dir>/checkpoint-final/` (written atomically, loads with `vst_vla.backbone.load_backbone`),
`<output_dir>/rl_log.jsonl` (one line per logged step, rebuilt from the checkpoint's log history on resume) and
`<output_dir>/rl_summary.json` (mean reward over the first and last 20 % of steps).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

from spatial_tuning.eval_spatial import left_padding
from spatial_tuning.prompts import uses_think_prompt
from spatial_tuning.rewards import (
    MODES,
    VST_MODES,
    accuracy_reward,
    format_score,
    is_scorable,
    parse_meta_info,
)
from spatial_tuning.sample import SpatialSample
from spatial_tuning.sft_trainer import BackboneCheckpointLoading
from spatial_tuning.thinking import assistant_reply, generation_opening, template_kwargs
from vst_vla.atomic import atomic_directory, write_json, write_text
from vst_vla.backbone import load_backbone, save_backbone
from vst_vla.checkpoints import (
    MarkCheckpointComplete,
    remove_incomplete_checkpoints,
    resolve_resume,
    train_or_restore,
)
from vst_vla.errors import UnsupportedHereError
from vst_vla.families import family_of

log = logging.getLogger(__name__)


# --- data ------------------------------------------------------------------------------------------------


def _arrow_safe(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Every content part gets the same keys so the column has one Arrow type; TRL fills the images in.
    return [{"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]]}
            for m in messages]


def rl_rows(samples: Sequence[SpatialSample], think: bool | None = True,
            prompt_format: str = "vlm3d_reasoner") -> list[dict[str, Any]]:
    """GRPO rows (`prompt`, `images`, `meta_info` as JSON, `skill`, `think`: whether the row got the think prompt)
    from the rule-checkable image samples, prompted by `prompt_format` (see `prompts.uses_think_prompt`)."""
    rows, skipped = [], {"no_mode": 0, "video": 0}
    for sample in samples:
        if not is_scorable(sample.meta_info):
            skipped["no_mode"] += 1
            continue
        if sample.videos:  # TRL 1.16's GRPOTrainer feeds images only
            skipped["video"] += 1
            continue
        wants_think = uses_think_prompt(sample.meta_info, sample.think, prompt_format, think)
        rows.append({"prompt": _arrow_safe(sample.messages(think=wants_think, include_answer=False)),
                     "images": sample.pil_images(), "meta_info": json.dumps(sample.meta_info),
                     "skill": sample.skill, "think": wants_think})
    if any(skipped.values()):
        log.info("rl: skipped %d samples without a rule-checkable meta_info.mode and %d video samples",
                 skipped["no_mode"], skipped["video"])
    if not rows:
        raise ValueError(f"no rule-checkable image samples (meta_info.mode one of {MODES} or a list of {VST_MODES}, "
                         f"meta_info.answer set) among {len(samples)} samples")
    return rows


def rl_dataset(samples: Sequence[SpatialSample], think: bool | None = True, prompt_format: str = "vlm3d_reasoner"):
    """A `datasets.Dataset` of GRPO rows (images stored as an image feature)."""
    from datasets import Dataset

    return Dataset.from_list(rl_rows(samples, think, prompt_format))


# --- rewards ---------------------------------------------------------------------------------------------


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    # Conversational completions: [{"role": "assistant", "content": str | [parts]}]
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content)
    return content or ""


def make_reward_funcs(require_think: bool = True, opening: str = "") -> list[Callable[..., list[float]]]:
    """The `accuracy` and `format` reward functions in TRL's signature (one float per completion). The format
    wants the think block where the row's `think` column says the think prompt was used (else `require_think`);
    VST's 3D-detection rows are held to its JSON box format. Both score the assistant reply: the completion behind
    `opening`, what the chat template wrote after the assistant header (`thinking.assistant_reply`)."""

    def wanted(completions, think) -> list[bool]:
        return [bool(w) for w in think] if think is not None else [require_think] * len(completions)

    def replies(completions, wants) -> list[str]:
        return [assistant_reply(opening, _text(c), w) for c, w in zip(completions, wants)]

    def accuracy(prompts, completions, meta_info, think=None, **kwargs) -> list[float]:
        wants = wanted(completions, think)
        return [accuracy_reward(r, parse_meta_info(m)) for r, m in zip(replies(completions, wants), meta_info)]

    def format(prompts, completions, think=None, meta_info=None, **kwargs) -> list[float]:
        wants = wanted(completions, think)
        metas = meta_info if meta_info is not None else [None] * len(completions)
        return [format_score(r, parse_meta_info(m) if m is not None else None, require_think=w)
                for r, w, m in zip(replies(completions, wants), wants, metas)]

    return [accuracy, format]


# --- trainer ---------------------------------------------------------------------------------------------


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle is a function of (seed, epoch) alone.

    TRL seeds one generator once and advances it every epoch, so a run resumed in epoch e would start the
    generator afresh and replay epoch 0's prompt order; the Trainer calls `set_epoch` before every epoch."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed(int(self.seed or 0) + int(epoch))


class DapoGRPOTrainer(BackboneCheckpointLoading, GRPOTrainer):
    """`GRPOTrainer` with DAPO online filtering (groups whose accuracy rewards are all equal leave the loss)
    and exact resume (weights reloaded under their saved names, the prompt order by epoch)."""

    def __init__(self, *args, dapo_filter: bool = True, accuracy_index: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dapo_filter = dapo_filter
        self.accuracy_index = accuracy_index
        self._dapo_keep: torch.Tensor | None = None

    def _get_train_sampler(self, dataset=None) -> RepeatSampler:
        sampler = super()._get_train_sampler(dataset)
        return EpochSeededRepeatSampler(
            data_source=sampler.data_source, mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size, repeat_count=sampler.repeat_count, shuffle=sampler.shuffle,
            seed=sampler.seed)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Gathered over processes: consecutive rows are one prompt's group, as TRL's own grouping assumes.
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        accuracy = rewards_per_func[:, self.accuracy_index].view(-1, group)
        varied = (accuracy.amax(dim=1) - accuracy.amin(dim=1)) > 1e-6  # NaN compares False: dropped
        self._dapo_keep = varied.repeat_interleave(group)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.dapo_filter or not self.model.training or self._dapo_keep is None:
            return output
        n_local = output["completion_mask"].size(0)
        start = self.accelerator.process_index * n_local
        keep = self._dapo_keep[start:start + n_local].to(output["completion_mask"].device)
        output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1).to(output["completion_mask"].dtype)
        output["advantages"] = output["advantages"] * keep.to(output["advantages"].dtype)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        self._metrics["train"]["dapo/kept_group_frac"].append(self._dapo_keep.float().mean().item())
        return output


def _log_row(step: int, logs: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, **{k: v for k, v in logs.items() if k != "step" and isinstance(v, (int, float))}}


class JsonlLogCallback(TrainerCallback):
    """Appends every training log (reward, its components, completion length, loss) to a JSONL file.

    At the start of training the file is rewritten from the Trainer's log history: empty on a fresh start, the
    resumed checkpoint's steps on a resume (dropping what a killed run logged after its last checkpoint)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.rebuild(state)

    def rebuild(self, state) -> None:
        """Rows and file from `state.log_history` (also after a checkpoint at the budget was only read)."""
        self.rows = [_log_row(entry["step"], entry) for entry in state.log_history if "reward" in entry]
        if state.is_world_process_zero:
            write_text(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return
        row = _log_row(state.global_step, logs)
        self.rows.append(row)
        if state.is_world_process_zero:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


class TimeLimitCallback(TrainerCallback):
    """An optional safety stop (not the budget: that is `max_steps`): after `limit_s` seconds of this process's
    training it saves a checkpoint, stops, logs a warning and records where it stopped (`fired_at_step`)."""

    def __init__(self, limit_s: float | None):
        self.limit_s = float(limit_s) if limit_s else None
        self.start = time.monotonic()
        self.fired_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.limit_s is None or control.should_training_stop or time.monotonic() - self.start <= self.limit_s:
            return
        self.fired_at_step = state.global_step
        log.warning("rl: time limit hit: stopping after %.0f s (grpo.time_limit_s=%s) at step %d of %d; "
                    "rerun the same command to continue", time.monotonic() - self.start, self.limit_s,
                    state.global_step, state.max_steps)
        control.should_training_stop = True
        control.should_save = args.save_strategy != "no"


def vllm_usable(requested: Any) -> bool:
    """vLLM generation when asked for (`true`) or by default (`auto`) only with vllm installed and a GPU."""
    available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if requested in (True, "true") and not available:
        raise UnsupportedHereError("grpo.use_vllm=true needs the vllm package and a CUDA GPU (pip install '.[gpu]')")
    return bool(available and requested in (True, "true", "auto"))


def vision_token_ids(model) -> list[int]:
    """Ids of the vision placeholder tokens; a sampled one would break the backbone family's 3-D rope index."""
    return list(family_of(model).vision_token_ids(model.config).values())


def grpo_config(cfg: DictConfig, output_dir: Path, suppress_token_ids: Sequence[int] = (),
                chat_template_kwargs: dict[str, Any] | None = None) -> GRPOConfig:
    """Map the `grpo` and `trainer` config groups onto TRL's `GRPOConfig`; `chat_template_kwargs` (one set for every
    prompt: see `thinking.template_kwargs`) go to the chat template."""
    g, t = cfg.grpo, cfg.trainer
    if int(g.num_iterations) > 1 and str(g.save_strategy) == "steps" and int(g.save_steps) % int(g.num_iterations):
        # TRL reuses one generation for num_iterations steps and a resumed run generates afresh: checkpoints
        # must fall where an uninterrupted run generates too, or the resumed run diverges.
        raise ValueError(f"grpo.save_steps={g.save_steps} must be a multiple of grpo.num_iterations="
                         f"{g.num_iterations} so that a resumed run generates where an uninterrupted one does")
    cpu = str(t.device) == "cpu" or not torch.cuda.is_available()
    weights = OmegaConf.to_container(g.reward_weights)
    use_vllm = vllm_usable(g.use_vllm)
    # TRL suppresses only the image token when sampling with transformers; a sampled <|vision_start|> or video
    # token makes the training forward's rope index miscount the vision tokens.
    generation_kwargs = {"suppress_tokens": list(suppress_token_ids)} if suppress_token_ids and not use_vllm else None
    return GRPOConfig(
        output_dir=str(output_dir / "trainer"),
        num_generations=int(g.num_generations), temperature=float(g.temperature), top_p=float(g.top_p),
        epsilon=float(g.epsilon), epsilon_high=float(g.epsilon_high), beta=float(g.beta),
        loss_type=str(g.loss_type), scale_rewards=str(g.scale_rewards), num_iterations=int(g.num_iterations),
        mask_truncated_completions=bool(g.mask_truncated_completions),
        max_completion_length=int(g.max_completion_length), learning_rate=float(g.learning_rate),
        lr_scheduler_type=str(g.lr_scheduler_type), warmup_steps=int(g.warmup_steps),
        max_steps=int(g.max_steps), per_device_train_batch_size=int(g.per_device_train_batch_size),
        gradient_accumulation_steps=int(g.gradient_accumulation_steps),
        reward_weights=[float(weights["accuracy"]), float(weights["format"])],
        use_vllm=use_vllm, vllm_mode=str(g.vllm_mode), generation_kwargs=generation_kwargs,
        chat_template_kwargs=dict(chat_template_kwargs) if chat_template_kwargs else None,
        bf16=bool(t.bf16) and not cpu, fp16=bool(t.fp16) and not cpu, use_cpu=cpu,
        gradient_checkpointing=bool(t.gradient_checkpointing) and not cpu,
        dataloader_num_workers=int(t.dataloader_num_workers), logging_steps=1,
        save_strategy=str(g.save_strategy), save_steps=int(g.save_steps), save_total_limit=g.save_total_limit,
        report_to=list(g.report_to),
        seed=int(cfg.seed), log_completions=False, disable_tqdm=False,
    )


def train_rl(cfg: DictConfig, samples: Sequence[SpatialSample], output_dir: Path) -> dict[str, Any]:
    """Run GRPO from `cfg.model` on `samples` (resuming per `cfg.resume`); save `<output_dir>/checkpoint-final/`;
    return the summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    resume = resume_point(cfg, output_dir)
    remove_incomplete_checkpoints(output_dir / "trainer")
    model, processor = load_backbone(cfg.model)
    think = cfg.think  # None: per sample (type contains "thought")
    dataset = rl_dataset(samples, think=think, prompt_format=str(OmegaConf.select(cfg, "prompt.format",
                                                                                  default="vlm3d_reasoner")))
    log.info("rl: %d training prompts, %d generations each, %d steps", len(dataset), cfg.grpo.num_generations,
             cfg.grpo.max_steps)
    # TRL renders every prompt with one set of template kwargs, so a thinking switch (Qwen3.5) is on for the whole
    # run as soon as one row thinks. Trade-off in a mixed run: non-think rows get an opened <think> too; they earn
    # the plain-answer format by closing it at once (empty) and answering (thinking.assistant_reply).
    chat_template_kwargs = template_kwargs(processor, dataset["think"])
    opening = generation_opening(processor, chat_template_kwargs)
    if chat_template_kwargs:
        log.info("rl: chat template kwargs %s; generation prompts end with %r", chat_template_kwargs, opening)
    log_callback, time_limit = JsonlLogCallback(output_dir / "rl_log.jsonl"), TimeLimitCallback(cfg.grpo.time_limit_s)
    with left_padding(processor):
        trainer = DapoGRPOTrainer(
            model=model, processing_class=processor,
            args=grpo_config(cfg, output_dir, vision_token_ids(model), chat_template_kwargs),
            train_dataset=dataset, reward_funcs=make_reward_funcs(require_think=think is not False, opening=opening),
            callbacks=[MarkCheckpointComplete(), log_callback, time_limit], dapo_filter=bool(cfg.grpo.dapo_filter),
        )
        if train_or_restore(trainer, resume, int(cfg.grpo.max_steps)) is None:
            log_callback.rebuild(trainer.state)  # the checkpoint was at the budget: read, not trained further
    with atomic_directory(output_dir / "checkpoint-final", overwrite=True) as tmp:
        save_backbone(trainer.model, processor, tmp)
    summary = reward_trend(log_callback.rows)
    summary.update(checkpoint=str(output_dir / "checkpoint-final"), global_step=trainer.state.global_step,
                   max_steps=int(cfg.grpo.max_steps), resumed_from=resume,
                   time_limit_s=time_limit.limit_s, stopped_by_time_limit_at_step=time_limit.fired_at_step)
    write_json(output_dir / "rl_summary.json", summary)
    log.info("rl: mean reward first 20%% of steps %.3f -> last 20%% %.3f over %d steps; saved %s",
             summary["reward_first_20pct"], summary["reward_last_20pct"], summary["steps"], summary["checkpoint"])
    return summary


def resume_point(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint `cfg.resume` (auto | true | false | path) resumes from under `<output_dir>/trainer`."""
    return resolve_resume(cfg.resume, output_dir / "trainer", final_artifact=output_dir / "checkpoint-final")


def reward_trend(rows: Sequence[dict[str, Any]], fraction: float = 0.2) -> dict[str, Any]:
    """Mean reward, accuracy and format rate over the first and the last `fraction` of logged steps."""
    n = len(rows)
    k = max(1, round(n * fraction)) if n else 0

    def mean(part, key):
        values = [r[key] for r in part if key in r]
        return sum(values) / len(values) if values else float("nan")

    first, last = rows[:k], rows[n - k:] if n else []
    out: dict[str, Any] = {"steps": n}
    for key, name in (("reward", "reward"), ("rewards/accuracy/mean", "accuracy"), ("rewards/format/mean", "format")):
        out[f"{name}_first_20pct"], out[f"{name}_last_20pct"] = mean(first, key), mean(last, key)
    return out


def load_rl_samples(cfg: DictConfig) -> list[SpatialSample]:
    """Samples from `cfg.data.paths` (VST parquet files or directories) through the shared reader."""
    from spatial_tuning.readers import load_samples, reader_options

    paths = list(cfg.data.paths or [])
    if not paths:
        raise ValueError("data.paths is empty: pass data.paths=[DIR/vst_r/train.parquet] (from `vst-vla synth`)")
    samples = load_samples(paths, **reader_options(cfg.data))
    if cfg.data.max_samples:
        samples = samples[: int(cfg.data.max_samples)]
    return samples


def run(cfg: DictConfig) -> dict[str, Any]:
    """Entry point of `vst-vla rl`."""
    from vst_vla.hydra_run import resolve_out, setup_torch

    setup_torch(cfg)
    output_dir = resolve_out(cfg, "output_dir")
    resume_point(cfg, output_dir)  # a resume setting that cannot work fails before reading data or loading
    return train_rl(cfg, load_rl_samples(cfg), output_dir)
