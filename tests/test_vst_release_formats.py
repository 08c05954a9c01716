"""Every published row shape (VST SFT / RL parquet, LLaVA JSON) read, checked, tokenised and trained on."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vst_release_fixtures import ACCEPTED, BOX, REJECTED, write_bad_fixtures, write_release_fixtures

from spatial_tuning.grpo import rl_rows
from spatial_tuning.readers import BadSampleError, load_samples, load_samples_with_report
from spatial_tuning.sft import train_sft
from spatial_tuning.sft_tokenize import IGNORE_INDEX, count_tokens, encode_sample


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    files = write_release_fixtures(root)
    samples, report = load_samples_with_report([root / "parquet", files["llava"], files["llava_jsonl"]])
    return root, {s.id: s for s in samples}, report


def test_every_accepted_shape_loads_with_its_media_and_repairs(release):
    _, samples, report = release
    assert sorted(samples) == sorted(row_id for _, row_id, *_ in ACCEPTED)
    for shape, row_id, n_images, n_videos, _ in ACCEPTED:
        sample = samples[row_id]
        assert (len(sample.images), len(sample.videos)) == (n_images, n_videos), shape
        text = "".join(t["value"] for t in sample.conversations)
        assert "<|image_pad|>" not in text and "<|video_pad|>" not in text  # one representation inside
    expected_repairs: dict[str, int] = {}
    for *_, repairs in ACCEPTED:
        for kind in repairs:
            expected_repairs[kind] = expected_repairs.get(kind, 0) + 1
    assert dict(report.repaired) == expected_repairs
    assert report.repaired_rows == sum(1 for *_, repairs in ACCEPTED if repairs) == 5
    assert report.total_skipped == 0 and "repaired 5" in report.summary()


def test_shapes_keep_placement_prompts_and_ground_truth(release):
    _, samples, _ = release
    # Interleaved flags stay where they were written.
    parts = samples["sft_multi"].messages()[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    # No flag: one `<image>` per image prepended to the first turn (VST's rule).
    assert samples["sft_no_flag"].conversations[0]["value"] == "<image><image>Did the camera move left?"
    assert samples["llava_images"].conversations[0]["value"].startswith("<image><image>Same object?")
    # A leading gpt turn and the empty turn are dropped; consecutive human turns pass on as they are.
    assert [t["from"] for t in samples["sft_leading_gpt"].conversations] == ["human", "human", "gpt"]
    assert samples["sft_text"].images == [] and samples["sft_thought"].think and not samples["sft_pad"].think
    assert len(samples["sft_video"].videos[0]) == 3 and len(samples["llava_video_dir"].videos[0]) == 3
    assert len(samples["sft_video_mp4"].videos[0]) == 3  # 6 frames at 4 fps, decoded at VST's 2 fps
    assert samples["llava_video_file"].conversations[0]["value"] == "<video>What happens?"
    assert len(samples["llava_video_file"].videos[0]) == 3  # 6 frames at 4 fps sampled at 2 fps
    # meta_info: a JSON list kept under "items"; RL rows carry mode, question_type and the answer column.
    assert samples["sft_pad"].meta_info == {"items": [{"resized_width": -1, "resized_height": -1, "width": 56,
                                                       "height": 56}]}
    assert samples["sft_llava_token"].meta_info == {} and samples["sft_bbox"].meta_info == {}
    assert samples["rl_mc"].meta_info == {"mode": ["multi_choices_score"], "question_type": "fixture_rl_mc",
                                          "answer": "A"}
    assert samples["rl_mc"].conversations == [{"from": "human", "value": "<image>Which is closer? A. cube B. ball"},
                                              {"from": "gpt", "value": "A"}]
    assert samples["rl_mc"].skill == "fixture_rl_mc" and samples["rl_mc"].think
    assert samples["rl_box"].type == "bbox_3d" and not samples["rl_box"].think  # VST: no think prompt for 3D boxes
    assert samples["rl_num"].conversations[0]["value"] == "<image>How far is the cube in metres?"
    assert samples["sft_multi"].meta_info["answer"] == "B"


def test_every_shape_tokenises_and_trains_one_packed_step(release, compose, tiny_backbone, tmp_path):
    model, processor = tiny_backbone
    samples = list(release[1].values())
    for sample in samples:
        encoded = encode_sample(sample, processor)
        assert count_tokens(sample, processor) == encoded["input_ids"].numel(), sample.id
        assert (encoded["labels"] != IGNORE_INDEX).any(), sample.id
    cfg = compose("sft", ["experiment=tiny", f"output_dir={tmp_path}", "report_to=[]", "optim.max_steps=1",
                          "max_tokens_per_pack=8192", "trainer.per_device_train_batch_size=1", "save_steps=null",
                          "trainer.torch_threads=1"])
    metrics = train_sft(cfg, copy.deepcopy(model), processor, samples, [], out_dir=tmp_path)
    total = sum(count_tokens(s, processor) for s in samples)
    assert len(metrics["train_losses"]) == 1 and math.isfinite(metrics["train_losses"][0])
    assert metrics["train_tokens"] == total  # all shapes went into the one packed step


@pytest.mark.parametrize("shape,row_id,reason", REJECTED, ids=[r[1] for r in REJECTED])
def test_bad_rows_are_refused_with_a_named_reason(tmp_path, shape, row_id, reason):
    files = write_bad_fixtures(tmp_path)
    with pytest.raises(BadSampleError) as info:
        load_samples(files[row_id])
    assert (info.value.reason, info.value.row_id) == (reason, row_id), shape
    assert str(files[row_id]) in str(info.value)


def test_unsafe_paths_name_the_path_and_are_never_opened(tmp_path):
    files = write_bad_fixtures(tmp_path)
    outside = str(tmp_path / "outside.png")
    opened: list[str] = []
    watching = [True]

    def audit(event: str, args: tuple) -> None:
        # Python raises an "open" audit event for every file open (builtins.open, io.open, os.open).
        if watching[0] and event == "open" and args and str(args[0]).endswith("outside.png"):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: `watching` switches this one off after the test
    try:
        for row_id in ("bad_escape", "bad_symlink", "bad_absolute"):
            samples, report = load_samples_with_report(files[row_id], on_bad_sample="skip")
            assert samples == [] and dict(report.skipped) == {"unsafe_image_path": 1}
            message = report.examples["unsafe_image_path"][0]
            assert str(files[row_id]) in message and row_id in message
        assert opened == []
        # With absolute paths allowed explicitly, the same absolute row loads (and the file is opened).
        (sample,) = load_samples(files["bad_absolute"], allow_absolute_paths=True)
        assert sample.images == [Path(outside).read_bytes()] and opened
    finally:
        watching[0] = False


def test_escape_message_names_the_path(tmp_path):
    files = write_bad_fixtures(tmp_path)
    with pytest.raises(BadSampleError, match=r"path '\.\./outside\.png' resolves to .*outside\.png, outside the "
                                             r"image root"):
        load_samples(files["bad_escape"])
    with pytest.raises(BadSampleError, match="absolute path .* refused .*allow_absolute_image_paths"):
        load_samples(files["bad_absolute"])


def test_bbox_ground_truth_keeps_boxes(release):
    from spatial_tuning.rewards import parse_boxes

    assert parse_boxes(release[1]["rl_box"].meta_info["answer"])[0]["bbox_3d"] == BOX["bbox_3d"]


def test_vst_vla_sft_runs_on_a_release_parquet_directory(tmp_path):
    root = tmp_path / "data"
    write_release_fixtures(root)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [str(Path(sys.executable).parent / "vst-vla"), "sft", "experiment=tiny", "model.device=cpu",
               f"data.train=[{root / 'parquet'}]", "data.on_bad_sample=error", "optim.max_steps=2",
               "save_steps=null", "report_to=[]", f"output_dir={tmp_path / 'out'}",
               f"data.token_count_cache={tmp_path / 'counts'}", "trainer.torch_threads=1"]
    proc = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # on_bad_sample=error: any refused row would have stopped the run; every row is trained on.
    assert "sft: 18 train samples" in proc.stdout + proc.stderr
    assert (tmp_path / "out" / "checkpoint-final" / "config.json").is_file()
    # 18 parquet rows: 13 SFT rows (11 struct + bare bytes + path) and 5 RL rows, all read (one cache per file).
    assert len(list((tmp_path / "counts").glob("*.json"))) == 4


def test_vst_vla_rl_runs_on_a_release_rl_parquet_directory(tmp_path):
    """`vst-vla rl` on a directory holding VST's RL parquet (`id, images, question, answer, meta_info`), with
    on_bad_sample=error: every row (multi-choice, relaxed, vqa+anls, math, bbox3d) becomes a GRPO prompt."""
    from vst_vla.cli import run_command

    files = write_release_fixtures(tmp_path / "release")
    rl_dir = tmp_path / "vst_r"
    rl_dir.mkdir()
    (rl_dir / "rl.parquet").write_bytes(files["rl"].read_bytes())
    summary = run_command("rl", [f"hydra.run.dir={tmp_path / 'run'}", f"data.paths=[{rl_dir}]", "model.device=cpu",
                                 "data.on_bad_sample=error", "grpo.max_steps=1", "grpo.num_generations=5",
                                 "grpo.per_device_train_batch_size=5", "grpo.max_completion_length=4",
                                 "grpo.report_to=[]"])
    assert summary["steps"] == 1 and (tmp_path / "run" / "checkpoint-final" / "config.json").is_file()
    # No row was left out of the prompts either (the RL stage skips unscorable or video samples).
    assert [row["skill"] for row in rl_rows(load_samples(rl_dir, on_bad_sample="error"))] == [
        f"fixture_{row_id}" for row_id in ("rl_mc", "rl_num", "rl_vqa", "rl_math", "rl_box")]
