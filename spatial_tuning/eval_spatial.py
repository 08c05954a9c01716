"""`vst-vla eval-spatial`: checkpoints side by side on held-out spatial samples, per skill, next to chance.

Each checkpoint answers every sample by batched greedy generation (left padding). Answers are scored by the
ground truth's `meta_info.mode`: exact match of the option letter (multiple choice), MRA (numeric, VSI-Bench's
mean relative accuracy), AP at IoU 0.15 and mean IoU after Hungarian matching (3D boxes). Rows in VST's RL format
(`mode` a list of score names) are scored by VST's reward accuracy (`rewards.accuracy_reward`), their 3D-detection
rows by AP and IoU. Each skill's chance level sits in the same row: 1 / #options, the MRA of always answering the
skill's mean value, and the AP / IoU of answering the skill's mean box (none for VST accuracy). Writes
`metrics.json` and `metrics.md`, prints the table. With a thinking switch in the chat template (Qwen3.5), each
prompt is rendered with `enable_thinking` set by its own row and scored on the full reply, as in RL
(spatial_tuning/thinking.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from spatial_tuning import metrics
from spatial_tuning.prompts import uses_think_prompt
from spatial_tuning.rewards import (
    accuracy_reward,
    bbox3d_scores,
    extract_choice,
    extract_number,
    format_score,
    ground_truth_boxes,
    ground_truth_choice,
    is_box_row,
    is_scorable,
    option_texts,
    parse_boxes,
    split_answer,
)
from spatial_tuning.sample import SpatialSample
from spatial_tuning.thinking import assistant_reply, generation_opening, template_kwargs
from vst_vla.atomic import write_json, write_text
from vst_vla.backbone import device_of, load_backbone

log = logging.getLogger(__name__)

METRIC_NAMES = {"multiple_choice": "accuracy", "numeric": "MRA", "bbox3d": "AP@15", "vst": "VST accuracy"}


# --- generation ------------------------------------------------------------------------------------------


def prompt_texts(samples: Sequence[SpatialSample], wants_think: Sequence[bool], processor) -> list[str]:
    """Generation prompts of `samples`, each with the think prompt and the template's thinking switch (where it has
    one) set by its own flag in `wants_think`; unlike RL's one switch per run, a non-think row is never opened a
    think block."""
    return [processor.apply_chat_template(s.messages(think=w, include_answer=False), tokenize=False,
                                          add_generation_prompt=True, **template_kwargs(processor, [w]))
            for s, w in zip(samples, wants_think)]


def _batch_inputs(samples: Sequence[SpatialSample], wants_think: Sequence[bool], processor):
    texts = prompt_texts(samples, wants_think, processor)
    images = [image for s in samples for image in s.pil_images()]
    videos = [[np.asarray(frame) for frame in frames] for s in samples for frames in s.pil_videos()]
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
    return processor(**kwargs)


@contextlib.contextmanager
def left_padding(processor) -> Iterator[None]:
    """Left padding, so batched prompts end where generation starts. GRPO training needs it too: TRL left-pads
    the prompt ids but builds `mm_token_type_ids` with the processor's own padding, so a right-padding processor
    misplaces the image tokens of the shorter prompts (a wrong 3-D rope, or a crash in Qwen2.5-VL's
    get_rope_index). TRL sets this only for processors it loads."""
    saved = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"
    try:
        yield
    finally:
        processor.tokenizer.padding_side = saved


@torch.no_grad()
def generate_answers(model, processor, samples: Sequence[SpatialSample], think: bool | None = None,
                     batch_size: int = 8, max_new_tokens: int = 128, desc: str = "generating",
                     prompt_format: str = "none") -> list[str]:
    """Greedy replies to `samples`, batched with left padding (prompts end where generation starts); the think
    prompt goes where `prompts.uses_think_prompt(..., prompt_format, think)` says. A reply is the generated text
    behind what the chat template opened for it (`thinking.assistant_reply`), so it is scored as in RL."""
    tokenizer = processor.tokenizer
    device = device_of(model)
    model.eval()
    wants_think = [uses_think_prompt(s.meta_info, s.think, prompt_format, think) for s in samples]
    openings = {w: generation_opening(processor, template_kwargs(processor, [w])) for w in set(wants_think)}
    replies: list[str] = []
    with left_padding(processor):
        for start in tqdm(range(0, len(samples), batch_size), desc=desc, leave=False):
            wants = wants_think[start:start + batch_size]
            inputs = _batch_inputs(samples[start:start + batch_size], wants, processor).to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            replies += [assistant_reply(openings[w], text, w) for text, w in zip(texts, wants)]
    return replies


# --- scoring ---------------------------------------------------------------------------------------------


def score_answer(completion: str, sample: SpatialSample, require_think: bool = True) -> dict[str, Any]:
    """Per-sample scores by the ground truth's mode (accuracy / MRA / boxes) plus the think-format flag."""
    meta = sample.meta_info
    mode = meta.get("mode")
    _, answer = split_answer(completion)
    if mode is not None and not isinstance(mode, str):  # a VST row: its list of score names
        # VST scores 3D detection on the whole completion; everything else by its reward accuracy.
        mode, answer = ("bbox3d", completion) if is_box_row(meta) else ("vst", answer)
    record: dict[str, Any] = {"id": sample.id, "skill": sample.skill, "mode": mode, "completion": completion}
    if mode == "vst":
        record["accuracy"] = accuracy_reward(completion, meta)
    elif mode == "multiple_choice":
        record["correct"] = metrics.exact_match(extract_choice(answer, meta.get("options")), ground_truth_choice(meta))
        record["n_options"] = len(option_texts(meta.get("options"))) or 4
    elif mode == "numeric":
        target = float(str(meta["answer"]).replace(",", ""))
        record["target"] = target
        record["mra"] = metrics.mean_relative_accuracy(extract_number(answer, meta.get("unit")), target)
    elif mode == "bbox3d":
        record["predicted"], record["reference"] = parse_boxes(answer), ground_truth_boxes(meta)
        record["mean_iou"] = bbox3d_scores(record["predicted"], record["reference"])["mean_iou"]
    else:
        raise ValueError(f"sample {sample.id}: meta_info.mode={mode!r} cannot be scored")
    record["format"] = format_score(completion, meta, require_think=require_think)
    return record


def skill_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-skill metric and chance level from per-sample records of one checkpoint."""
    by_skill: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_skill[record["skill"]].append(record)
    out: dict[str, dict[str, Any]] = {}
    for skill, rows in sorted(by_skill.items()):
        mode = rows[0]["mode"]
        entry: dict[str, Any] = {"mode": mode, "n": len(rows), "metric": METRIC_NAMES[mode],
                                 "format_rate": float(np.mean([r["format"] for r in rows]))}
        if mode == "vst":
            entry["value"], entry["chance"] = float(np.mean([r["accuracy"] for r in rows])), float("nan")
        elif mode == "multiple_choice":
            entry["value"] = float(np.mean([r["correct"] for r in rows]))
            entry["chance"] = metrics.choice_chance([r["n_options"] for r in rows])
        elif mode == "numeric":
            entry["value"] = float(np.mean([r["mra"] for r in rows]))
            entry["chance"] = metrics.numeric_chance([r["target"] for r in rows])
        else:
            entry["value"] = metrics.average_precision_3d([r["predicted"] for r in rows], [r["reference"] for r in rows])
            entry["mean_iou"] = float(np.mean([r["mean_iou"] for r in rows]))
            chance = metrics.bbox3d_chance([r["reference"] for r in rows])
            entry["chance"], entry["chance_mean_iou"] = chance["ap15"], chance["mean_iou"]
        out[skill] = entry
    return out


def evaluate_checkpoint(source: Any, samples: Sequence[SpatialSample], cfg: DictConfig, name: str = "") -> dict[str, Any]:
    """Load one checkpoint, answer `samples`, and return per-skill metrics plus overall format rate."""
    # The `model` group supplies device, dtype and pixel limits; each checkpoint only swaps the source.
    model_cfg = dict(OmegaConf.to_container(cfg.model, resolve=True))
    if source not in (None, "model"):
        model_cfg["source"] = str(source)
    model, processor = load_backbone(model_cfg)
    prompt_format = str(OmegaConf.select(cfg, "prompt.format", default="none"))
    replies = generate_answers(model, processor, samples, think=cfg.think, batch_size=int(cfg.generation.batch_size),
                               max_new_tokens=int(cfg.generation.max_new_tokens), desc=f"eval {name}",
                               prompt_format=prompt_format)
    # Format means the think format where the think prompt was used, a plain non-empty answer elsewhere.
    records = [score_answer(c, s, require_think=uses_think_prompt(s.meta_info, s.think, prompt_format, cfg.think))
               for c, s in zip(replies, samples)]
    del model
    return {"source": str(model_cfg["source"]), "skills": skill_metrics(records),
            "format_rate": float(np.mean([r["format"] for r in records])) if records else float("nan"),
            "examples": [{k: r[k] for k in ("id", "skill", "completion")} for r in records[: int(cfg.keep_examples)]]}


# --- report ----------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def render_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One markdown table: a row per skill (two for 3D boxes), a column per checkpoint, chance beside."""
    names = list(results)
    skills = sorted({s for r in results.values() for s in r["skills"]})
    header = ["skill", "n", "metric", "chance", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for skill in skills:
        entries = {n: results[n]["skills"].get(skill, {}) for n in names}
        ref = next(e for e in entries.values() if e)
        lines.append(f"| {skill} | {ref['n']} | {ref['metric']} | {_fmt(ref['chance'])} | "
                     + " | ".join(_fmt(entries[n].get("value")) for n in names) + " |")
        if ref["mode"] == "bbox3d":
            lines.append(f"| {skill} | {ref['n']} | mean IoU | {_fmt(ref['chance_mean_iou'])} | "
                         + " | ".join(_fmt(entries[n].get("mean_iou")) for n in names) + " |")
    means = {n: np.mean([e["value"] for e in results[n]["skills"].values()]) if results[n]["skills"] else None
             for n in names}
    chance = np.mean([next(r["skills"][s]["chance"] for r in results.values() if s in r["skills"]) for s in skills])
    lines.append("| **mean over skills** | | | " + _fmt(float(chance) if skills else None) + " | "
                 + " | ".join(_fmt(means[n]) for n in names) + " |")
    lines.append("| format rate | | | - | " + " | ".join(_fmt(results[n]["format_rate"]) for n in names) + " |")
    return "\n".join(lines)


# --- entry point -----------------------------------------------------------------------------------------


def load_eval_samples(cfg: DictConfig) -> list[SpatialSample]:
    """Held-out samples from `data.paths` (VST parquet) and the local benchmark copies in `benchmarks`."""
    samples: list[SpatialSample] = []
    paths = list(cfg.data.paths or [])
    if paths:
        from spatial_tuning.readers import load_samples, reader_options

        samples += load_samples(paths, **reader_options(cfg.data))
    from spatial_tuning.benchmarks import read_cv_bench, read_vsi_bench

    limit = cfg.data.max_samples_per_source
    if cfg.benchmarks.cv_bench:
        samples += read_cv_bench(cfg.benchmarks.cv_bench, max_samples=limit)
    if cfg.benchmarks.vsi_bench:
        samples += read_vsi_bench(cfg.benchmarks.vsi_bench, max_samples=limit,
                                  num_frames=int(cfg.benchmarks.vsi_num_frames))
    samples = [s for s in samples if is_scorable(s.meta_info)]
    if cfg.data.max_per_skill:
        samples = first_per_skill(samples, int(cfg.data.max_per_skill))
    if cfg.data.max_samples:
        samples = samples[: int(cfg.data.max_samples)]
    if not samples:
        raise ValueError("no scorable samples: pass data.paths=[...test.parquet] and/or benchmarks.cv_bench=DIR / "
                         "benchmarks.vsi_bench=DIR (samples need meta_info.mode)")
    return samples


def first_per_skill(samples: Sequence[SpatialSample], limit: int) -> list[SpatialSample]:
    """The first `limit` samples of every skill, in their original order (a small run still covers each skill)."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for sample in samples:
        if seen[sample.skill] < limit:
            seen[sample.skill] += 1
            kept.append(sample)
    return kept


def evaluate(cfg: DictConfig, samples: Sequence[SpatialSample], out_dir: Path) -> dict[str, Any]:
    """Evaluate every checkpoint in `cfg.checkpoints` on `samples`; write metrics.json / metrics.md."""
    checkpoints = OmegaConf.to_container(cfg.checkpoints, resolve=True) if cfg.checkpoints else {"model": "model"}
    results = {name: evaluate_checkpoint(source, samples, cfg, name=name) for name, source in checkpoints.items()}
    table = render_table(results)
    write_json(out_dir / "metrics.json", {"n_samples": len(samples), "checkpoints": results})
    write_text(out_dir / "metrics.md", f"# Spatial evaluation ({len(samples)} samples)\n\n{table}\n")
    print(table)
    log.info("eval-spatial: wrote %s and %s", out_dir / "metrics.json", out_dir / "metrics.md")
    return {"table": table, "results": results}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Entry point of `vst-vla eval-spatial`."""
    from vst_vla.hydra_run import resolve_out, setup_torch

    setup_torch(cfg)
    torch.manual_seed(int(cfg.seed))
    return evaluate(cfg, load_eval_samples(cfg), resolve_out(cfg, "output_dir"))
