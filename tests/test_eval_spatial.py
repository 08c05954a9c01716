"""`vst-vla eval-spatial`: batched generation on the tiny backbone, per-skill scores next to chance."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from spatial_tuning.eval_spatial import (
    evaluate,
    generate_answers,
    prompt_texts,
    render_table,
    score_answer,
    skill_metrics,
)
from spatial_tuning.grpo import make_reward_funcs
from spatial_tuning.sample import SpatialSample
from vst_vla.backbone import load_backbone

BOX = [0.1, 0.0, 2.0, 0.4, 0.3, 0.5, 0.0, 0.1, 0.0]


def _png(color, size=(56, 56)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def eval_samples() -> list[SpatialSample]:
    """Two samples per mode: multiple choice (one and two images), numeric, 3D boxes, and a video question."""
    mc = {"skill": "depth_comparison", "mode": "multiple_choice", "options": ["red box", "blue ball"]}
    return [
        SpatialSample("mc0", [{"from": "human", "value": "<image>Which is closer? (A) red box (B) blue ball"},
                              {"from": "gpt", "value": "<think>x</think> A"}], images=[_png((255, 0, 0))],
                      type="depth_comparison_thought", meta_info={**mc, "answer": "A"}),
        SpatialSample("mc1", [{"from": "human", "value": "<image><image>Which is closer? (A) red box (B) blue ball"},
                              {"from": "gpt", "value": "B"}], images=[_png((0, 0, 255), (84, 56)), _png((0, 0, 0))],
                      type="depth_comparison", meta_info={**mc, "answer": "B"}),
        SpatialSample("num0", [{"from": "human", "value": "<image>How far is the red box from the camera?"},
                               {"from": "gpt", "value": "2.0 m"}], images=[_png((9, 9, 9))], type="distance",
                      meta_info={"skill": "distance", "mode": "numeric", "answer": 2.0, "unit": "m"}),
        SpatialSample("num1", [{"from": "human", "value": "<video>How far did the camera move?"},
                               {"from": "gpt", "value": "1.0 m"}], videos=[[_png((i * 40, 0, 0)) for i in range(4)]],
                      type="distance", meta_info={"skill": "distance", "mode": "numeric", "answer": 1.0, "unit": "m"}),
        SpatialSample("box0", [{"from": "human", "value": "<image>Output the 3D bounding box of the red box."},
                               {"from": "gpt", "value": json.dumps([{"label": "red box", "bbox_3d": BOX}])}],
                      images=[_png((200, 0, 0))], type="bbox3d",
                      meta_info={"skill": "bbox3d", "mode": "bbox3d", "answer": [{"label": "red box", "bbox_3d": BOX}]}),
    ]


def test_batched_generation_matches_one_by_one(tiny_backbone):
    model, processor = tiny_backbone
    samples = eval_samples()
    batched = generate_answers(model, processor, samples, batch_size=5, max_new_tokens=6)
    single = [generate_answers(model, processor, [s], batch_size=1, max_new_tokens=6)[0] for s in samples]
    assert batched == single  # left padding: padded rows generate the same greedy tokens


def test_scores_and_chance_per_skill():
    samples = eval_samples()
    answers = ["<think>x</think> A", "(a)", "<think>x</think> 2.2 m", "1.0", "```json\n" + json.dumps(
        [{"label": "red box", "bbox_3d": BOX}]) + "\n```"]
    records = [score_answer(a, s, require_think=s.think) for a, s in zip(answers, samples)]
    skills = skill_metrics(records)
    assert skills["depth_comparison"] == pytest.approx({"mode": "multiple_choice", "n": 2, "metric": "accuracy",
                                                        "format_rate": 1.0, "value": 0.5, "chance": 0.5})
    # MRA: 10 % error -> 0.9; exact -> 1.0. Chance answers the mean 1.5: 25 % and 50 % error -> 0.6, 0.1.
    assert skills["distance"]["value"] == pytest.approx(0.95) and skills["distance"]["chance"] == pytest.approx(0.35)
    assert skills["bbox3d"]["value"] == 1.0 and skills["bbox3d"]["mean_iou"] == pytest.approx(1.0)
    # One sample: the mean box is the box without its yaw (0.1 * 180 deg): AP@15 1, IoU below 1.
    assert skills["bbox3d"]["chance"] == 1.0 and skills["bbox3d"]["chance_mean_iou"] == pytest.approx(0.787, abs=1e-3)


def test_vst_rows_score_by_vst_accuracy_and_boxes_by_ap():
    # VST RL rows (mode = a list of score names): VST's reward accuracy; their 3D detection: AP and IoU.
    box_json = json.dumps([{"label": "red box", "bbox_3d": BOX}])
    rows = [SpatialSample(f"v{i}", [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": truth}],
                          images=[_png((9, 9, 9))], meta_info={"skill": skill, "mode": modes, "answer": truth})
            for i, (skill, modes, truth) in enumerate([("counting", ["vqa_score"], "2 dogs"),
                                                       ("counting", ["vqa_score"], "3"),
                                                       ("detection", ["bbox3d"], box_json)])]
    answers = ["<think>x</think> Two dogs.", "<think>x</think> four", "```json\n" + box_json + "\n```"]
    records = [score_answer(a, s, require_think=True) for a, s in zip(answers, rows)]
    skills = skill_metrics(records)
    # "Two dogs." normalises to "2 dogs" (1), "four" to "4" (0): mean 0.5; no chance level for VST accuracy.
    assert skills["counting"]["metric"] == "VST accuracy" and skills["counting"]["value"] == 0.5
    assert skills["counting"]["format_rate"] == 1.0 and skills["counting"]["chance"] != skills["counting"]["chance"]
    # The box row answers plain JSON (VST gives 3D detection no think prompt): JSON format 1, AP@15 1.
    assert skills["detection"]["metric"] == "AP@15" and skills["detection"]["value"] == 1.0
    assert skills["detection"]["format_rate"] == 1.0


def test_evaluate_writes_metrics_and_one_table(tiny_checkpoint_dir, compose, tmp_path, capsys):
    cfg = compose("eval-spatial", ["experiment=tiny", "model.device=cpu", "generation.max_new_tokens=4",
                                   "generation.batch_size=3",
                                   f"checkpoints={{model: tiny, untuned_again: {tiny_checkpoint_dir}}}"])
    result = evaluate(cfg, eval_samples(), tmp_path)
    printed = capsys.readouterr().out
    assert printed.strip() == result["table"]
    header = printed.splitlines()[0]
    assert header == "| skill | n | metric | chance | model | untuned_again |"
    assert "| depth_comparison | 2 | accuracy | 0.500 |" in printed and "| bbox3d | 1 | mean IoU | 0.787 |" in printed
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["checkpoints"]) == {"model", "untuned_again"} and saved["n_samples"] == 5
    # The same weights answer the same way.
    assert saved["checkpoints"]["model"]["skills"] == saved["checkpoints"]["untuned_again"]["skills"]
    assert (tmp_path / "metrics.md").read_text().count("| skill |") == 1


def test_render_table_marks_missing_values():
    results = {"a": {"skills": {"s": {"mode": "numeric", "n": 1, "metric": "MRA", "value": 0.5, "chance": float("nan")}},
                     "format_rate": 1.0}}
    assert "| s | 1 | MRA | - | 0.500 |" in render_table(results)


def test_first_per_skill_keeps_every_skill():
    from spatial_tuning.eval_spatial import first_per_skill

    kept = first_per_skill(eval_samples(), 1)
    assert [s.id for s in kept] == ["mc0", "num0", "box0"]


def test_cli_reads_vst_parquet_and_writes_metrics(tmp_path):
    from spatial_tuning.vst_format import write_parquet
    from vst_vla.cli import run_command

    data = write_parquet(eval_samples(), tmp_path / "test.parquet")
    result = run_command("eval-spatial", [f"hydra.run.dir={tmp_path / 'run'}", f"data.paths=[{data}]",
                                          "model.device=cpu", "generation.max_new_tokens=2", "data.max_per_skill=1"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["n_samples"] == 3 and set(saved["checkpoints"]["model"]["skills"]) == {"bbox3d", "depth_comparison",
                                                                                       "distance"}
    assert result["table"].splitlines()[0] == "| skill | n | metric | chance | model |"


def test_qwen3_5_think_rows_are_prompted_and_scored_as_in_rl(compose, tmp_path):
    model, processor = load_backbone({"source": "tiny_qwen3_5", "device": "cpu"})
    samples = eval_samples()[:3]  # mc0 thinks (its type contains "thought"); mc1 and num0 do not
    wants = [s.think for s in samples]
    assert wants == [True, False, False]
    # Each row's own switch: the think row's block is opened, the others keep the template's closed empty block.
    header = "<|im_start|>assistant\n"
    assert [p.rpartition(header)[2] for p in prompt_texts(samples, wants, processor)] == [
        "<think>\n", "<think>\n\n</think>\n\n", "<think>\n\n</think>\n\n"]

    replies = generate_answers(model, processor, samples, batch_size=3, max_new_tokens=5)
    # The think row's reply is the opened <think> plus what the model generated after it (greedy, one by one).
    inputs = processor(text=prompt_texts(samples[:1], [True], processor), images=samples[0].pil_images(),
                       return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    completion = processor.tokenizer.decode(generated[0], skip_special_tokens=True)
    assert replies[0] == "<think>\n" + completion
    # Scored as RL scores the same completion behind the same opening.
    rl_format = make_reward_funcs(opening="<think>\n")[1]
    assert score_answer(replies[0], samples[0])["format"] == rl_format(
        prompts=[None], completions=[completion], think=[True])[0]

    # A think completion that closes the opened block earns the format and is scored on its answer.
    good = score_answer("<think>\n" + "the red box is nearer</think>\nA", samples[0])
    assert good["format"] == 1.0 and good["correct"] == 1.0
    assert rl_format(prompts=[None], completions=["the red box is nearer</think>\nA"], think=[True]) == [1.0]

    # Through `evaluate`, the examples kept in metrics.json are the full replies.
    cfg = compose("eval-spatial", ["experiment=tiny", "model=tiny_qwen3_5", "model.device=cpu",
                                   "generation.max_new_tokens=5", "generation.batch_size=3"])
    examples = evaluate(cfg, samples, tmp_path)["results"]["model"]["examples"]
    assert [e["completion"] for e in examples] == replies
