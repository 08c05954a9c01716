"""Rows in every published VST / LLaVA shape, written by us from the documented schemas (no copied data).

Sources of each shape: `docs/train.md` and `prepare_data/sft/convert_*.py` (SFT parquet: `meta_info` a JSON
list of per-image sizes, `<image>` kept from LLaVA sources, text rows with one empty image), `vst/preprocess.py`
(`<|image_pad|>` / `<|video_pad|>` flags, `type` text / video / thought / bbox_3d), `prepare_data/rl/
convert_rl_parquet.py` (RL parquet), and the LLaVA JSON shape the converters read. `write_release_fixtures`
writes the accepted rows, `write_bad_fixtures` the rows that must be refused; `ACCEPTED` and `REJECTED` are
the fixture table (the reader's expected outcome for each row).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_FLAG, VIDEO_FLAG = "<|image_pad|>", "<|video_pad|>"
BOX = {"label": "red cube", "bbox_3d": [0.1, -0.2, 1.5, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0]}
_SIZES = json.dumps([{"resized_width": -1, "resized_height": -1, "width": 56, "height": 56}])

# (shape, row id, images, videos, repairs the reader makes) of every accepted row.
ACCEPTED = [
    ("sft: <|image_pad|>, meta_info JSON list", "sft_pad", 1, 0, set()),
    ("sft: 2 images, interleaved flags, meta_info object with VST modes", "sft_multi", 2, 0, set()),
    ("sft: LLaVA <image> kept by the converter, meta_info empty", "sft_llava_token", 1, 0, set()),
    ("sft: 2 images, no placeholder", "sft_no_flag", 2, 0, {"prepended_placeholders"}),
    ("sft: type text with the converter's empty image", "sft_text", 0, 0, set()),
    ("sft: type bbox_3d, meta_info missing", "sft_bbox", 1, 0, set()),
    ("sft: type video, 3 frames in images", "sft_video", 0, 1, set()),
    ("sft: type video, an mp4 file's bytes in images", "sft_video_mp4", 0, 1, set()),
    ("sft: type thought_*, <think> answer", "sft_thought", 1, 0, set()),
    ("sft: multi-turn", "sft_multi_turn", 1, 0, set()),
    ("sft: leading gpt turn and an empty turn", "sft_leading_gpt", 1, 0,
     {"dropped_leading_non_human_turn", "dropped_empty_turn"}),
    ("sft: images as bare bytes", "sft_bare_bytes", 1, 0, set()),
    ("sft: images as paths under the file's folder", "sft_paths", 1, 0, set()),
    ("rl: multi_choices_score", "rl_mc", 1, 0, set()),
    ("rl: relaxed_score, no flag in question", "rl_num", 1, 0, {"prepended_placeholders"}),
    ("rl: vqa_score + anls_score", "rl_vqa", 1, 0, set()),
    ("rl: math_score", "rl_math", 1, 0, set()),
    ("rl: bbox3d", "rl_box", 1, 0, set()),
    ("llava json: image", "llava_image", 1, 0, set()),
    ("llava json: images list, no placeholder", "llava_images", 2, 0, {"prepended_placeholders"}),
    ("llava json: video as a folder of frames", "llava_video_dir", 0, 1, set()),
    ("llava jsonl: video file (mp4), no placeholder", "llava_video_file", 0, 1, {"prepended_placeholders"}),
]
# (shape, row id, reason) of every refused row.
REJECTED = [
    ("llava json: image path ../outside.png", "bad_escape", "unsafe_image_path"),
    ("llava json: symlink inside the root pointing outside", "bad_symlink", "unsafe_image_path"),
    ("llava json: absolute image path", "bad_absolute", "unsafe_image_path"),
    ("rl: empty answer", "bad_rl_empty", "empty_answer"),
    ("sft: empty last gpt turn", "bad_sft_empty", "empty_answer"),
    ("rl: bbox3d answer not JSON", "bad_box", "answer_not_boxes"),
    ("rl: relaxed_score answer not a number", "bad_num", "answer_not_number"),
    ("rl: multi_choices_score answer without a letter", "bad_mc", "answer_not_choice"),
    ("sft: own mode multiple_choice, answer 'maybe'", "bad_own_mc", "answer_not_choice"),
    ("sft: own mode numeric, answer 'far'", "bad_own_num", "answer_not_number"),
    ("rl: unknown score name", "bad_mode", "unknown_reward_mode"),
    ("sft: 1 flag, 2 images", "bad_count", "image_count_mismatch"),
]


def png(value: int, size: int = 56) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, 80, 200 - value % 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _struct(value: int, name: str) -> dict:
    return {"bytes": png(value), "path": name}


def _turns(*pairs: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]


def _sft(row_id: str, turns: list[dict], images: list, row_type: str = "mm_qa", meta_info: str | None = _SIZES) -> dict:
    return {"id": row_id, "conversations": turns, "data_source": "fixture", "images": images, "type": row_type,
            "meta_info": meta_info}


def _rl(row_id: str, question: str, answer: str, mode: list[str], n_images: int = 1) -> dict:
    return {"id": row_id, "images": [_struct(40 + i, f"/data/rl/{row_id}_{i}.jpg") for i in range(n_images)],
            "question": question, "answer": answer,
            "meta_info": json.dumps({"mode": mode, "question_type": "fixture_" + row_id})}


def _write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def sft_struct_rows() -> list[dict]:
    """SFT rows with `images: [{bytes, path}]`, as the converters write them."""
    own_mc = json.dumps({"mode": ["multi_choices_score"], "answer": "B", "skill": "depth"})
    return [
        _sft("sft_pad", _turns(f"{IMAGE_FLAG}\nHow far is the cube?", "About 1.5 m."), [_struct(1, "a.jpg")]),
        _sft("sft_multi", _turns(f"Image 1: {IMAGE_FLAG} Image 2: {IMAGE_FLAG} Which is closer? A. cube B. ball",
                                 "B"), [_struct(2, "b0.jpg"), _struct(3, "b1.jpg")], meta_info=own_mc),
        _sft("sft_llava_token", _turns("<image>\nWhat colour is the cube?", "Red."), [_struct(4, "c.jpg")],
             meta_info=""),
        _sft("sft_no_flag", _turns("Did the camera move left?", "Yes."), [_struct(5, "d0.jpg"), _struct(6, "d1.jpg")]),
        _sft("sft_text", _turns("What is 2 + 2?", "4"), [{"bytes": b"", "path": ""}], row_type="text"),
        _sft("sft_bbox", _turns(f"{IMAGE_FLAG}Output the 3D box of the red cube.", "```json\n" + json.dumps([BOX])
                                + "\n```"), [_struct(7, "e.jpg")], row_type="bbox_3d", meta_info=None),
        _sft("sft_video", _turns(f"{VIDEO_FLAG}\nWhat appears first?", "The ball."),
             [_struct(10 + f, f"v_{f}.png") for f in range(3)], row_type="video"),
        _sft("sft_thought", _turns(f"{IMAGE_FLAG}Which is closer? A. cube B. ball",
                                   "<think>The ball is at 1 m, the cube at 2 m.</think> B"),
             [_struct(8, "f.jpg")], row_type="thought_depth"),
        _sft("sft_multi_turn", _turns(f"{IMAGE_FLAG}How many cubes?", "Two.", "And balls?", "One."),
             [_struct(9, "g.jpg")]),
        _sft("sft_leading_gpt", [{"from": "gpt", "value": "Hello! Ask me about the picture."},
                                 {"from": "human", "value": f"{IMAGE_FLAG}Is it red?"}, {"from": "gpt", "value": " "},
                                 {"from": "human", "value": "Is it red? Answer in a sentence."},
                                 {"from": "gpt", "value": "It is red."}], [_struct(11, "h.jpg")]),
    ]


def rl_rows() -> list[dict]:
    """RL rows (`id, images, question, answer, meta_info`), with image paths as the converter writes them:
    absolute paths next to the bytes (never opened: the bytes are there)."""
    return [
        _rl("rl_mc", f"{IMAGE_FLAG}Which is closer? A. cube B. ball", "A", ["multi_choices_score"]),
        _rl("rl_num", "How far is the cube in metres?", "1.5", ["relaxed_score"]),
        _rl("rl_vqa", f"{IMAGE_FLAG}What colour is the cube?", "red", ["vqa_score", "anls_score"]),
        _rl("rl_math", f"{IMAGE_FLAG}The cube is 2 m away, the ball 3 m. Sum?", "$5$", ["math_score"]),
        _rl("rl_box", f"{IMAGE_FLAG}Output the 3D box of the red cube.", json.dumps([BOX]), ["bbox3d"]),
    ]


def _mp4(path: Path, frames: int = 6) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 56, 56, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((56, 56, 3), 30 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_release_fixtures(root: Path) -> dict[str, Path]:
    """Every accepted shape under `root`: `parquet/` (SFT and RL files) and `json/` (LLaVA JSON, JSONL, images)."""
    parquet, llava = root / "parquet", root / "json"
    (root / "clip.mp4").parent.mkdir(parents=True, exist_ok=True)
    _mp4(root / "clip.mp4")
    mp4_row = _sft("sft_video_mp4", _turns(f"{VIDEO_FLAG}What changes?", "It gets brighter."),
                   [{"bytes": (root / "clip.mp4").read_bytes(), "path": "/videos/clip.mp4"}], row_type="video")
    files = {"sft": _write([*sft_struct_rows(), mp4_row], parquet / "sft_struct.parquet"),
             "sft_bytes": _write([_sft("sft_bare_bytes", _turns(f"{IMAGE_FLAG}Is it blue?", "No."), [png(12)])],
                                 parquet / "sft_bytes.parquet"),
             "rl": _write(rl_rows(), parquet / "rl.parquet")}
    (parquet / "img").mkdir(parents=True, exist_ok=True)
    (parquet / "img" / "p.png").write_bytes(png(13))
    files["sft_paths"] = _write([_sft("sft_paths", _turns(f"{IMAGE_FLAG}Is it green?", "No."), ["img/p.png"])],
                                parquet / "sft_paths.parquet")
    (llava / "images" / "frames").mkdir(parents=True, exist_ok=True)
    for name, value in (("a.png", 20), ("b.png", 21), ("c.png", 22)):
        (llava / "images" / name).write_bytes(png(value))
    for f in range(3):
        (llava / "images" / "frames" / f"{f:03d}.png").write_bytes(png(30 + f))
    _mp4(llava / "images" / "clip.mp4")
    rows = [{"id": "llava_image", "image": "images/a.png", "conversations": _turns("<image>\nWhat is it?", "A cube.")},
            {"id": "llava_images", "images": ["images/b.png", "images/c.png"], "conversations": _turns("Same object?", "Yes.")},
            {"id": "llava_video_dir", "video": "images/frames", "conversations": _turns("<image>\nWhat moves?", "The ball.")}]
    files["llava"] = llava / "data.json"
    files["llava"].write_text(json.dumps(rows))
    files["llava_jsonl"] = llava / "video.jsonl"
    files["llava_jsonl"].write_text(json.dumps({"id": "llava_video_file", "video": "images/clip.mp4", "type": "video",
                                                "conversations": _turns("What happens?", "It gets brighter.")}))
    return files


def write_bad_fixtures(root: Path) -> dict[str, Path]:
    """Every refused row under `root/bad/`, one file per row id (so each can be loaded with on_bad_sample=error).
    `root/outside.png` is a valid image outside the image root (`root/bad`, the JSON files' folder)."""
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (root / "outside.png").write_bytes(png(99))
    (bad / "link.png").symlink_to(root / "outside.png")
    llava = {"bad_escape": "../outside.png", "bad_symlink": "link.png", "bad_absolute": str(root / "outside.png")}
    files = {}
    for row_id, image in llava.items():
        files[row_id] = bad / f"{row_id}.json"
        files[row_id].write_text(json.dumps([{"id": row_id, "image": image,
                                              "conversations": _turns("<image>\nWhat is it?", "A cube.")}]))
    rl = {"bad_rl_empty": ("", ["vqa_score"]), "bad_box": ("[{label: cube}]", ["bbox3d"]),
          "bad_num": ("far away", ["relaxed_score"]), "bad_mc": ("the ball", ["multi_choices_score"]),
          "bad_mode": ("B", ["exp_rate"])}
    for row_id, (answer, mode) in rl.items():
        files[row_id] = _write([_rl(row_id, f"{IMAGE_FLAG}Question?", answer, mode)], bad / f"{row_id}.parquet")
    own = {"bad_own_mc": ("multiple_choice", "maybe"), "bad_own_num": ("numeric", "far")}
    for row_id, (mode, answer) in own.items():
        files[row_id] = _write([_sft(row_id, _turns(f"{IMAGE_FLAG}Question?", answer), [_struct(1, "x.jpg")],
                                     meta_info=json.dumps({"mode": mode, "answer": answer}))], bad / f"{row_id}.parquet")
    files["bad_sft_empty"] = _write([_sft("bad_sft_empty", _turns(f"{IMAGE_FLAG}Question?", "  "),
                                          [_struct(1, "x.jpg")])], bad / "bad_sft_empty.parquet")
    files["bad_count"] = _write([_sft("bad_count", _turns(f"{IMAGE_FLAG}Question?", "Yes."),
                                      [_struct(1, "x.jpg"), _struct(2, "y.jpg")])], bad / "bad_count.parquet")
    return files
