"""`vst-vla rl`: TRL GRPOTrainer with VST rewards and DAPO filtering, on the tiny backbone."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from spatial_tuning.grpo import (
    DapoGRPOTrainer,
    grpo_config,
    left_padding,
    make_reward_funcs,
    rl_dataset,
    rl_rows,
    train_rl,
    vision_token_ids,
    vllm_usable,
)
from spatial_tuning.rewards import accuracy_reward, format_score
from spatial_tuning.sample import SpatialSample
from spatial_tuning.thinking import generation_opening, template_kwargs
from vst_vla.backbone import load_backbone
from vst_vla.families.qwen3_vl import trl_chat_template


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buffer, format="PNG")
    return buffer.getvalue()


def rl_samples(n: int = 4) -> list[SpatialSample]:
    """Rule-checkable samples (multiple choice and numeric), plus one video and one open-ended sample."""
    samples = []
    for i in range(n):
        letter = "AB"[i % 2]
        samples.append(SpatialSample(
            f"mc{i}", [{"from": "human", "value": "<image>Which is closer? (A) red box (B) blue ball"},
                       {"from": "gpt", "value": f"<think>depth</think> {letter}"}],
            images=[_png((255 * (i % 2), 0, 0))], type="depth_comparison_thought",
            meta_info={"skill": "depth_comparison", "mode": "multiple_choice", "answer": letter,
                       "options": ["red box", "blue ball"]}))
    samples.append(SpatialSample("num", [{"from": "human", "value": "<image>How far is the box?"},
                                         {"from": "gpt", "value": "<think>x</think> 2 m"}],
                                 images=[_png((0, 9, 0))], type="distance_thought",
                                 meta_info={"skill": "distance", "mode": "numeric", "answer": 2.0, "unit": "m"}))
    samples.append(SpatialSample("vid", [{"from": "human", "value": "<video>How far?"}, {"from": "gpt", "value": "1"}],
                                 videos=[[_png((0, 0, 0))] * 2], type="distance",
                                 meta_info={"skill": "distance", "mode": "numeric", "answer": 1.0}))
    samples.append(SpatialSample("cap", [{"from": "human", "value": "<image>Describe."}, {"from": "gpt", "value": "a box"}],
                                 images=[_png((1, 1, 1))], type="caption", meta_info={"skill": "caption"}))
    return samples


def _cfg(compose, *overrides):
    return compose("rl", ["experiment=tiny", "model.device=cpu", "grpo.report_to=[]", "grpo.max_completion_length=8",
                          "grpo.num_generations=2", "grpo.per_device_train_batch_size=4", "grpo.beta=0.0",
                          "grpo.dapo_filter=true", *overrides])


def test_rows_keep_rule_checkable_image_samples():
    rows = rl_rows(rl_samples(2), think=True)
    assert [json.loads(r["meta_info"])["mode"] for r in rows] == ["multiple_choice", "multiple_choice", "numeric"]
    assert rows[0]["prompt"][0]["content"][0]["text"].startswith("You are a helpful assistant. You should first think")
    assert rows[0]["prompt"][1]["content"][0]["type"] == "image" and len(rows[0]["images"]) == 1
    plain = rl_rows(rl_samples(1), think=False)
    assert plain[0]["prompt"][0]["content"][0]["text"] == "You are a helpful assistant." and not plain[0]["think"]
    assert rl_rows(rl_samples(1), think=None)[0]["think"]  # per sample: its type contains "thought"
    with pytest.raises(ValueError, match="no rule-checkable"):
        rl_rows(rl_samples(0)[-1:])


def test_reward_functions_in_trl_signature():
    accuracy, fmt = make_reward_funcs()
    assert (accuracy.__name__, fmt.__name__) == ("accuracy", "format")
    meta = json.dumps({"mode": "multiple_choice", "answer": "B"})
    completions = [[{"role": "assistant", "content": "<think>x</think> B"}], [{"role": "assistant", "content": "A"}]]
    assert accuracy(prompts=[None] * 2, completions=completions, meta_info=[meta] * 2) == [1.0, 0.0]
    assert fmt(prompts=[None] * 2, completions=completions) == [1.0, 0.0]
    assert make_reward_funcs(require_think=False)[1](prompts=[None] * 2, completions=completions) == [0.0, 1.0]
    assert fmt(prompts=[None] * 2, completions=completions, think=[False, False]) == [0.0, 1.0]


def test_vllm_falls_back_or_refuses_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert vllm_usable("auto") is False and vllm_usable(False) is False
    with pytest.raises(RuntimeError, match="vllm"):
        vllm_usable(True)


def test_config_maps_the_paper_settings(compose, tmp_path):
    cfg = compose("rl", ["model.device=cpu"])
    args = grpo_config(cfg, tmp_path)
    assert (args.num_generations, args.learning_rate, args.temperature) == (5, 1e-6, 1.0)
    assert (args.epsilon, args.epsilon_high, args.beta, args.loss_type) == (0.2, 0.28, 0.0, "dapo")
    assert args.reward_weights == [0.5, 0.5] and not args.bf16 and not args.use_vllm and cfg.grpo.dapo_filter
    assert grpo_config(_cfg(compose, "grpo.beta=0.04", "grpo.loss_type=grpo"), tmp_path).beta == 0.04
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 50, 2)  # resumable by default
    with pytest.raises(ValueError, match="save_steps=5 must be a multiple of grpo.num_iterations=2"):
        grpo_config(_cfg(compose, "grpo.num_iterations=2", "grpo.save_steps=5"), tmp_path)


def test_two_step_run_saves_a_loadable_checkpoint(compose, tmp_path):
    summary = train_rl(_cfg(compose, "grpo.max_steps=2"), rl_samples(4), tmp_path)
    assert summary["steps"] == 2 and summary["reward_first_20pct"] >= 0
    log = [json.loads(line) for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    for key in ("reward", "rewards/accuracy/mean", "rewards/format/mean", "completions/mean_length",
                "dapo/kept_group_frac"):
        assert key in log[0], key
    model, _ = load_backbone({"source": str(tmp_path / "checkpoint-final"), "device": "cpu"})
    assert model.config.model_type == "qwen2_5_vl"
    assert json.loads((tmp_path / "rl_summary.json").read_text())["steps"] == 2


def test_budget_is_steps_and_the_time_limit_only_a_reported_stop(compose, tmp_path):
    # A time limit that fires at once stops after the first step, saves a checkpoint and says so; the same
    # command without it continues to exactly max_steps: the number of steps does not depend on time.
    stopped = train_rl(_cfg(compose, "grpo.max_steps=3", "grpo.time_limit_s=1e-9"), rl_samples(4), tmp_path)
    assert stopped["stopped_by_time_limit_at_step"] == 1 and stopped["global_step"] == 1
    assert stopped["time_limit_s"] == 1e-9 and (tmp_path / "trainer" / "checkpoint-1" / "_COMPLETE").is_file()
    finished = train_rl(_cfg(compose, "grpo.max_steps=3"), rl_samples(4), tmp_path)
    assert finished["resumed_from"].endswith("checkpoint-1") and finished["global_step"] == 3
    assert finished["stopped_by_time_limit_at_step"] is None and finished["steps"] == 3
    assert [json.loads(line)["step"] for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_kl_on_and_think_prompt_off(compose, tmp_path):
    summary = train_rl(_cfg(compose, "grpo.max_steps=1", "grpo.beta=0.04", "think=false", "grpo.dapo_filter=false"),
                       rl_samples(2), tmp_path)
    log = json.loads((tmp_path / "rl_log.jsonl").read_text().splitlines()[0])
    assert summary["steps"] == 1 and "kl" in log and "dapo/kept_group_frac" not in log


def _length_reward(prompts, completions, **kwargs):
    return [len(c[0]["content"]) / 10 for c in completions]


def _constant_accuracy(prompts, completions, **kwargs):
    return [1.0] * len(completions)


@pytest.mark.parametrize("dapo_filter", [True, False])
def test_dapo_filter_drops_groups_with_equal_accuracy(compose, tmp_path, dapo_filter):
    # Accuracy is the same within every group while the second reward varies: DAPO drops every group.
    cfg = _cfg(compose, "grpo.temperature=1.0", "grpo.max_completion_length=6")
    model, processor = load_backbone({"source": "tiny", "device": "cpu"})
    trainer = DapoGRPOTrainer(model=model, processing_class=processor, args=grpo_config(cfg, tmp_path),
                              train_dataset=rl_dataset(rl_samples(2)), dapo_filter=dapo_filter,
                              reward_funcs=[_constant_accuracy, _length_reward])
    trainer.model.train()
    dataset = trainer.train_dataset
    batch = [dataset[i] for i in (0, 0, 1, 1)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    if dapo_filter:
        assert out["completion_mask"].sum() == 0 and torch.all(out["advantages"] == 0)
        assert trainer._metrics["train"]["dapo/kept_group_frac"] == [0.0]
    else:
        assert out["completion_mask"].sum() > 0 and torch.any(out["advantages"] != 0)


def test_image_tokens_stay_aligned_for_prompts_of_different_lengths(compose, tmp_path):
    # A one-image prompt next to a four-image one: TRL left-pads the prompt ids, so the vision token types must
    # be left-padded too, or the short prompt's image tokens land in its padding.
    long = SpatialSample("long", [{"from": "human", "value": "<image><image><image><image>In which order do the objects "
                                                               "appear in these frames? (A) box first (B) ball first"},
                                  {"from": "gpt", "value": "A"}], images=[_png((i * 60, 0, 0)) for i in range(4)],
                         type="order_thought", meta_info={"skill": "order", "mode": "multiple_choice", "answer": "A"})
    model, processor = load_backbone({"source": "tiny", "device": "cpu"})
    args = grpo_config(_cfg(compose, "grpo.max_completion_length=4"), tmp_path, vision_token_ids(model))
    assert args.generation_kwargs == {"suppress_tokens": vision_token_ids(model)}
    with left_padding(processor):
        trainer = DapoGRPOTrainer(model=model, processing_class=processor, args=args, dapo_filter=False,
                                  train_dataset=rl_dataset([rl_samples(1)[0], long]), reward_funcs=make_reward_funcs())
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in (0, 0, 1, 1)])
        prompt_types = out["mm_token_type_ids"][:, : out["prompt_ids"].size(1)]
        assert torch.equal(prompt_types == 1, out["prompt_ids"] == model.config.image_token_id)
        assert torch.isfinite(trainer.compute_loss(trainer.model, out))
    assert processor.tokenizer.padding_side == "right"  # restored for the saved checkpoint


def test_cli_reads_vst_parquet(tmp_path):
    from spatial_tuning.vst_format import write_parquet
    from vst_vla.cli import run_command

    data = write_parquet(rl_samples(2), tmp_path / "train.parquet")
    summary = run_command("rl", [f"hydra.run.dir={tmp_path / 'run'}", f"data.paths=[{data}]", "model.device=cpu",
                                 "grpo.max_steps=1", "grpo.num_generations=2", "grpo.per_device_train_batch_size=2",
                                 "grpo.max_completion_length=4", "grpo.report_to=[]"])
    assert summary["steps"] == 1 and (tmp_path / "run" / "checkpoint-final" / "config.json").is_file()


def test_rerunning_a_finished_run_leaves_its_checkpoint_unchanged(compose, tmp_path):
    """The rerun (resume=auto) finds trainer/checkpoint-2 at the budget, in the middle of an epoch (8 prompts, 2 per
    step): it is read, not trained one step further (which Trainer would do there)."""
    from safetensors.torch import load_file

    cfg = _cfg(compose, "grpo.max_steps=2", "grpo.save_steps=2")
    train_rl(cfg, rl_samples(8), tmp_path)
    weights = load_file(tmp_path / "checkpoint-final" / "model.safetensors")
    again = train_rl(cfg, rl_samples(8), tmp_path)
    assert again["resumed_from"].endswith("checkpoint-2") and again["global_step"] == 2 and again["steps"] == 2
    rerun = load_file(tmp_path / "checkpoint-final" / "model.safetensors")
    assert rerun.keys() == weights.keys() and all(torch.equal(rerun[k], weights[k]) for k in weights)
    assert [json.loads(line)["step"] for line in (tmp_path / "rl_log.jsonl").read_text().splitlines()] == [1, 2]


def _prompt_texts(processor, out) -> list[str]:
    return processor.tokenizer.batch_decode(out["prompt_ids"], skip_special_tokens=False)


def test_qwen3_5_think_rows_get_the_think_block_opened_and_can_earn_the_format_reward(compose, tmp_path):
    model, processor = load_backbone({"source": "tiny_qwen3_5", "device": "cpu"})
    dataset = rl_dataset(rl_samples(2), think=True)
    kwargs = template_kwargs(processor, dataset["think"])
    assert kwargs == {"enable_thinking": True}
    # What TRL renders: without the switch the no-think template closes an empty block in every prompt.
    header = "<|im_start|>assistant\n"
    for chat_kwargs, ending in (({}, header + "<think>\n\n</think>\n\n"), (kwargs, header + "<think>\n")):
        args = grpo_config(_cfg(compose, "grpo.max_completion_length=3"), tmp_path, vision_token_ids(model),
                           chat_kwargs)
        assert args.chat_template_kwargs == (chat_kwargs or None)
        with left_padding(processor):
            trainer = DapoGRPOTrainer(model=model, processing_class=processor, args=args, dapo_filter=False,
                                      train_dataset=dataset, reward_funcs=make_reward_funcs())
            trainer.model.train()
            out = trainer._generate_and_score_completions([dataset[i] for i in (0, 0, 1, 1)])
        assert all(text.endswith(ending) for text in _prompt_texts(processor, out))
    assert all(text.rpartition(header)[2] == "<think>\n" for text in _prompt_texts(processor, out))

    # The completion holds the reasoning and the closing tag only; scored behind the opening it earns the format.
    opening = generation_opening(processor, kwargs)
    assert opening == "<think>\n"
    accuracy, fmt = make_reward_funcs(opening=opening)
    completions = [[{"role": "assistant", "content": "the red box is nearer</think>\nA"}],
                   [{"role": "assistant", "content": "A"}],  # the opened block never closed: no answer
                   [{"role": "assistant", "content": "x</think> <think>y</think> A"}]]  # two think blocks
    meta = [json.dumps({"mode": "multiple_choice", "answer": "A"})] * 3
    assert fmt(prompts=[None] * 3, completions=completions, think=[True] * 3, meta_info=meta) == [1.0, 0.0, 0.0]
    assert accuracy(prompts=[None] * 3, completions=completions, meta_info=meta, think=[True] * 3) == [1.0, 0.0, 1.0]
    # Scored bare (before this fix), the good completion missed the opened <think> and lost its format reward.
    assert make_reward_funcs()[1](prompts=[None], completions=completions[:1], think=[True]) == [0.0]

    # Mixed run, one switch: a non-think row gets the block opened too and earns the plain format by closing it
    # at once; reasoning in a non-think row still fails the format.
    closed_at_once = [[{"role": "assistant", "content": "\n</think>\n\nA"}],
                      [{"role": "assistant", "content": "depth</think>\nA"}]]
    assert fmt(prompts=[None] * 2, completions=closed_at_once, think=[False] * 2) == [1.0, 0.0]

    # The think flavour (4B and larger) opens the block by default and closes it empty only when told to.
    processor.chat_template = trl_chat_template("qwen3_5_think")
    assert generation_opening(processor, template_kwargs(processor, [True])) == "<think>\n"
    assert generation_opening(processor, template_kwargs(processor, [False])) == "<think>\n\n</think>\n\n"
    plain = make_reward_funcs(opening=generation_opening(processor, template_kwargs(processor, [False])))[1]
    answers = [[{"role": "assistant", "content": "A"}], [{"role": "assistant", "content": "<think>\n\n</think>\n\nA"}]]
    assert plain(prompts=[None] * 2, completions=answers, think=[False] * 2) == [1.0, 1.0]


def test_templates_without_a_thinking_switch_render_and_score_as_before(compose, tmp_path, tiny_backbone):
    _, processor = tiny_backbone  # Qwen2.5-VL
    assert template_kwargs(processor, [True, False]) == {} and generation_opening(processor, {}) == ""
    assert grpo_config(_cfg(compose), tmp_path, chat_template_kwargs={}).chat_template_kwargs is None
    accuracy, fmt = make_reward_funcs(opening=generation_opening(processor, {}))
    texts = ["<think>x</think> B", "B", "<think></think> B", "x</think> B", "<think>x B"]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    meta = json.dumps({"mode": "multiple_choice", "answer": "B"})
    for think in (True, False):
        assert fmt(prompts=[None] * 5, completions=completions, think=[think] * 5) == [
            format_score(t, require_think=think) for t in texts]
        assert accuracy(prompts=[None] * 5, completions=completions, meta_info=[meta] * 5, think=[think] * 5) == [
            accuracy_reward(t, json.loads(meta)) for t in texts]
    assert fmt(prompts=[None] * 5, completions=completions, think=[False] * 5) == [0.0, 1.0, 0.0, 0.0, 0.0]
