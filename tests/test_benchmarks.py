"""Readers for local CV-Bench and VSI-Bench copies, on small files written here in the published formats; and
the real-size benchmark script (`bench/real_size.py`) at its small CPU size."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spatial_tuning.benchmarks import BenchmarkFormatError, read_cv_bench, read_vsi_bench


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _cv_row(idx, type_, task, answer="(B)"):
    return {"idx": idx, "type": type_, "task": task, "question": f"Which object is closer? ({idx})",
            "choices": ["lamp", "chair"], "answer": answer,
            "prompt": f"Which object is closer? ({idx}) Select from the following choices.\n(A) lamp\n(B) chair",
            "filename": f"img/{type_}/{task.lower()}/omni3d_{idx}.png", "source": "Omni3D",
            "source_dataset": "SUNRGBD", "source_filename": f"{idx}.jpg", "target_class": None,
            "target_size": None, "bbox": None}


def test_cv_bench_parquet_layout(tmp_path):
    for split, rows in (("2d", [_cv_row(0, "2D", "Count"), _cv_row(1, "2D", "Relation")]),
                        ("3d", [_cv_row(2, "3D", "Depth", "(A)"), _cv_row(3, "3D", "Distance")])):
        frame = pd.DataFrame([{**r, "image": {"bytes": _png((10 * r["idx"], 0, 0)), "path": r["filename"]}}
                              for r in rows])
        frame.to_parquet(tmp_path / f"test_{split}.parquet")
    samples = read_cv_bench(tmp_path)
    assert [s.skill for s in samples] == ["cvbench_2d_count", "cvbench_2d_relation", "cvbench_3d_depth",
                                          "cvbench_3d_distance"]
    depth = samples[2]
    assert depth.meta_info["mode"] == "multiple_choice" and depth.meta_info["answer"] == "A"
    assert depth.meta_info["options"] == ["lamp", "chair"]
    assert depth.pil_images()[0].getpixel((0, 0)) == (20, 0, 0)
    assert depth.conversations[0]["value"].startswith("<image>\nWhich object is closer? (2)")
    assert "(B) chair" in depth.prompt_text
    # max_samples spreads over the tasks.
    assert sorted(s.skill for s in read_cv_bench(tmp_path, max_samples=2)) == ["cvbench_2d_count", "cvbench_2d_relation"]


def test_cv_bench_jsonl_with_image_folder(tmp_path):
    rows = [_cv_row(0, "2D", "Count"), _cv_row(1, "3D", "Depth")]
    for row in rows:
        (tmp_path / row["filename"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / row["filename"]).write_bytes(_png((0, 255, 0)))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_cv_bench(tmp_path)
    assert len(samples) == 2 and samples[1].pil_images()[0].getpixel((1, 1)) == (0, 255, 0)


def test_cv_bench_errors_name_file_and_row(tmp_path):
    row = _cv_row(0, "2D", "Count", answer="lamp")
    (tmp_path / "img/2D/count").mkdir(parents=True)
    (tmp_path / row["filename"]).write_bytes(_png((0, 0, 0)))
    (tmp_path / "test_2d.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"test_2d.jsonl row 0: answer 'lamp'"):
        read_cv_bench(tmp_path)
    (tmp_path / "test_2d.jsonl").write_text(json.dumps({**_cv_row(0, "2D", "Count"), "filename": "img/none.png"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match="none.png not found"):
        read_cv_bench(tmp_path)
    with pytest.raises(FileNotFoundError, match="no CV-Bench annotations"):
        read_cv_bench(tmp_path / "missing")


def _write_video(path, n_frames=12):
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.full((32, 32, 3), 20 * i, dtype=np.uint8) for i in range(n_frames)]
    imageio.mimwrite(str(path), frames, fps=4, format="FFMPEG", macro_block_size=16)


def test_vsi_bench_jsonl_and_videos(tmp_path):
    _write_video(tmp_path / "scannet" / "scene0001_00.mp4")
    _write_video(tmp_path / "arkitscenes" / "41069025.mp4")
    rows = [
        {"id": 0, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_counting",
         "question": "How many table(s) are in this room?", "ground_truth": "4", "options": None},
        {"id": 1, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_rel_distance",
         "question": "Which object is closest to the sofa?", "ground_truth": "C",
         "options": ["A. table", "B. lamp", "C. tv", "D. bed"]},
        {"id": 2, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_abs_distance",
         "question": "How far apart are the bed and the tv (in meters)?", "ground_truth": "2.3", "options": None},
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_vsi_bench(tmp_path, num_frames=4)
    counting, relative, distance = samples
    assert counting.meta_info == {"skill": "vsibench_object_counting", "mode": "numeric", "answer": 4.0,
                                  "unit": None, "benchmark": "VSI-Bench", "scene_id": "41069025"}
    assert relative.meta_info["answer"] == "C" and relative.meta_info["options"][2] == "C. tv"
    assert distance.meta_info["unit"] == "m"
    frames = relative.pil_videos()[0]
    assert len(frames) == 4 and frames[0].size == (32, 32)
    # Uniform sampling: first and last frames of the 12 (grey 0 and 220, up to compression).
    assert frames[0].getpixel((16, 16))[0] < 15 and frames[-1].getpixel((16, 16))[0] > 200
    assert relative.conversations[0]["value"].startswith("<video>\nThese are frames of a video.")
    assert len(read_vsi_bench(tmp_path, max_samples=2, num_frames=2)) == 2


def test_vsi_bench_parquet_and_missing_video(tmp_path):
    rows = [{"id": 7, "dataset": "scannetpp", "scene_name": "abc", "question_type": "room_size_estimation",
             "question": "What is the size of this room?", "ground_truth": "20.5", "options": None, "pruned": False}]
    pd.DataFrame(rows).to_parquet(tmp_path / "test-00000-of-00001.parquet")
    with pytest.raises(BenchmarkFormatError, match=r"scannetpp/abc.mp4 not found"):
        read_vsi_bench(tmp_path)
    _write_video(tmp_path / "scannetpp" / "abc.mp4", n_frames=4)
    (sample,) = read_vsi_bench(tmp_path, num_frames=2)
    assert sample.meta_info["answer"] == 20.5 and sample.skill == "vsibench_room_size_estimation"


def test_real_size_benchmark_runs_at_small_size(tmp_path):
    """`bench/real_size.py --size small --quick`: every section runs on CPU and reports coherent numbers."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "real_size.py"
    out = tmp_path / "real_size.json"
    proc = subprocess.run([sys.executable, str(bench), "--size", "small", "--quick", "--device", "cpu",
                           "--json-out", str(out)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "device CPU" in proc.stdout and "size small" in proc.stdout
    result = json.loads(out.read_text())
    packed, trl = result["sft"]["packed"], result["sft"]["trl"]
    # The packed path (sdpa_varlen, one row) gives the summed loss of the samples run one by one (stock sdpa).
    exact = result["sft"]["exactness"]
    assert exact["attention"] == "sdpa_varlen" and exact["relative_difference"] < 1e-5
    # Packed SFT on sdpa goes through sdpa_varlen: a step's packs share one row, so nothing is padded; TRL pads
    # every sample of a batch to the longest one.
    assert packed["total"] == packed["real"] and trl["total"] > trl["real"]
    assert packed["mfu"] is None  # no peak is known for a CPU unless --peak-tflops is given
    assert result["sft"]["ratio"] == pytest.approx(packed["tokens_per_s"] / trl["tokens_per_s"])
    # The chunked SFT loss keeps fewer activations than the full logits, for the same loss.
    plain, chunked = result["loss"]["plain"], result["loss"]["chunked"]
    assert chunked["saved_gb"] < plain["saved_gb"] and chunked["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert all(result["vla"][head]["seconds"] > 0 for head in ("tokens", "l1_chunk", "flow"))
    eager, compiled = result["latency"]["eager"], result["latency"]["compiled"]
    assert {"prepare", "prefill", "tokens", "l1_chunk", "flow", "l1_chunk_e2e"} <= eager.keys()
    assert {"prefill", "l1_chunk", "flow"} <= compiled.keys() and "tokens" not in compiled
    assert result["load"]["load_s"] > 0 and result["load"]["read_s"] > 0 and result["load"]["random_init_load_s"] > 0
    for mode in ("eager", "compiled"):
        served = result["serve"][mode]
        assert served["errors"] == 0 and served["requests"] == 3 and served["p50_ms"] > 0


def _learnability():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "learnability.py"
    spec = importlib.util.spec_from_file_location("learnability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learnability_probes_answer_what_the_image_shows():
    """Every probe's ground truth is what its image shows: the asked colour's pixels sit in the answered quadrant."""
    probes = _learnability()
    for name in probes.PROBES:
        for sample in probes.make_split(name, 12, seed=3, size=112, side=16):
            image = np.asarray(sample.pil_images()[0].convert("RGB"))
            question, answer = sample.conversations[0]["value"], sample.meta_info["answer"]
            options = [o.split(". ", 1)[1] for o in sample.meta_info["options"]]
            chosen = options["ABCDEF".index(answer)]
            if name == "colour_word":  # answered with the colour's name, the options kept for scoring only
                assert sample.conversations[1]["value"] == chosen and "Options" not in question
            asked = next((c for c in probes.COLOURS if f" {c} square" in question), None)

            def quadrants_of(colour, image=image):
                ys, xs = np.nonzero((image == probes.COLOURS[colour]).all(axis=-1))
                return {probes.QUADRANTS[2 * int(y >= 56) + int(x >= 56)] for y, x in zip(ys, xs)}

            if name in ("colour", "colour_word"):
                assert quadrants_of(chosen)
            elif name == "position":
                assert quadrants_of("white") == {chosen}
            elif name == "colour_present":
                assert bool(quadrants_of(asked)) == (chosen == "yes")
            else:
                assert quadrants_of(asked) == {chosen}


def test_learnability_rows_reach_the_model_as_synth_rows_do(tiny_backbone):
    """A probe row goes through the chat template like a synth or VST row: its image between the vision markers."""
    from spatial_tuning.sft_tokenize import encode_sample

    _, processor = tiny_backbone
    tokens = processor.tokenizer.convert_tokens_to_ids
    probes = _learnability()
    for name in probes.PROBES:
        sample = probes.make_split(name, 1, seed=0, size=56, side=16)[0]
        ids = encode_sample(sample, processor)["input_ids"].tolist()
        start, end = ids.index(tokens("<|vision_start|>")), ids.index(tokens("<|vision_end|>"))
        # 56 px at 14 px patches, 2x2 merged: a 2x2 grid of image tokens, nothing else between the markers.
        assert ids[start + 1:end] == [tokens("<|image_pad|>")] * 4, name


def test_learnability_benchmark_trains_and_scores_every_probe():
    """`bench/learnability.py` at the tiny preset: each probe trains (its held-out loss falls) and is scored."""
    # No --threads: it would set torch's thread count for the rest of the test session.
    results = _learnability().main(["--experiment", "tiny", "--steps", "3", "--train", "24", "--test", "8"])
    assert [r["probe"] for r in results] == ["colour", "colour_word", "position", "colour_present", "colour_position"]
    assert [r["chance"] for r in results] == pytest.approx([1 / 6, 1 / 6, 1 / 4, 1 / 2, 1 / 4])
    for r in results:
        assert r["steps"] == 3 and r["n"] == 8 and 0.0 <= r["accuracy"] <= 1.0
        assert r["loss_end"] < r["loss_start"] and r["trained_with"] == [r["probe"]]


def test_learnability_joint_run_trains_one_backbone_on_every_probe():
    results = _learnability().main(["--experiment", "tiny", "--steps", "2", "--train", "8", "--test", "4",
                                    "--joint", "--probes", "colour_word", "colour_present"])
    assert [r["probe"] for r in results] == ["colour_word", "colour_present"]
    assert all(r["trained_with"] == ["colour_word", "colour_present"] and r["n"] == 4 for r in results)


def test_learnability_keeps_a_run_and_a_curriculum_continues_from_it(tmp_path):
    """`--output-dir` keeps each run's checkpoint-final; `model.source=` on it starts the next probe from those
    weights (its held-out loss starts where the first run's trained model is, not at a fresh model's)."""
    bench = _learnability()
    common = ["--experiment", "tiny", "--steps", "3", "--train", "24", "--test", "8", "--image-size", "56"]
    kept = [*common, "--output-dir", str(tmp_path)]
    (first,) = bench.main([*kept, "--probes", "position"])
    (fresh,) = bench.main([*common, "--probes", "colour_position"])
    (second,) = bench.main([*kept, "--probes", "colour_position",
                            "--override", f"model.source={tmp_path / 'position' / 'checkpoint-final'}"])
    assert (tmp_path / "position" / "checkpoint-final" / "config.json").is_file()
    assert second["loss_start"] < fresh["loss_start"] - 0.5 and first["loss_end"] < first["loss_start"]
