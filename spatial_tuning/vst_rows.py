"""The published row shapes (VST SFT parquet, VST RL parquet, LLaVA JSON) turned into `SpatialSample`s.

Conventions followed, from the VST repo (`Yangr116/VST`):
- Flags: `<|image_pad|>` / `<|video_pad|>` (`vst/preprocess.py` IMAGE_FLAG, VIDEO_FLAG); LLaVA's `<image>` is
  kept by the SFT converters (`prepare_data/sft/convert_json_parquet.py`) and handled at training time. Inside
  this stack a sample carries `<image>` / `<video>` (`spatial_tuning.sample`), so every flag is mapped to those.
- A row with images but no flag in its first turn gets one flag per image prepended to its first turn, any
  `<image>` there removed first (`vst/preprocess.py` convert_llava2qwen; `tools/parse_vst_500k.py`). We do
  that only when the row has no usable placeholders at all: `<image>` markers whose count matches the
  images stay where the author put them (VST would move them to the front of the first turn).
- Turns: a leading turn not from `human` is dropped (one turn, as `convert_llava2qwen` and
  `llava_sft_preprocess` do), then empty turns and turns whose role is not human/gpt are skipped. Each such
  repair is returned so the reader can count it.
- `type`: containing "text" drops the images (`SampleTransform.__call__`); containing "video" means the items
  of `images` are encoded video files, one per `<|video_pad|>` (`load_vision_inputs`,
  `prepare_data/sft/convert_json_parquet_video.py`), or, as we also accept, the frames of one video;
  containing "thought" selects the think prompt.
- `meta_info`: SFT converters write `json.dumps(meta_info_list)` (per-image sizes, docs/train.md); a list is
  kept under `meta_info["items"]`. RL rows (`prepare_data/rl/convert_rl_parquet.py`: `id, images, question,
  answer, meta_info`) carry a JSON object with `mode` (VST score names) and `question_type`; the `answer`
  column becomes the gpt turn and `meta_info["answer"]` (unless already there), as the RL trainer's
  `ground_truth` (`projects/spatial_rl/verl/utils/dataset.py`).
"""

from __future__ import annotations

import json
from typing import Any

from spatial_tuning.image_paths import ImageRoot, decode_video, image_bytes, is_image, video_frames
from spatial_tuning.row_problems import (
    BAD_META_INFO,
    DROPPED_EMPTY_TURN,
    DROPPED_LEADING_TURN,
    DROPPED_UNKNOWN_ROLE_TURN,
    EMPTY_ANSWER,
    EMPTY_CONVERSATION,
    NON_STRING_VALUE,
    PREPENDED_PLACEHOLDERS,
    RowProblem,
)
from spatial_tuning.sample import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, SpatialSample

IMAGE_FLAG = "<|image_pad|>"
VIDEO_FLAG = "<|video_pad|>"
ROLES = ("human", "gpt")
RL_COLUMNS = ("question", "answer")


def is_rl_row(columns: set[str] | dict) -> bool:
    """Whether a row (or a file's columns) has VST's RL shape: `question` and `answer`, no `conversations`."""
    return "conversations" not in columns and all(c in columns for c in RL_COLUMNS)


def sft_row_sample(row: dict[str, Any], row_id: str, root: ImageRoot) -> tuple[SpatialSample, set[str]]:
    """The sample of an SFT parquet row, and the repairs made to it."""
    row_type = _string_field(row, "type")
    images = [] if "text" in row_type else [image_bytes(item, f"image {i}", root)
                                            for i, item in enumerate(row.get("images") or [])]
    videos = [[image_bytes(f, f"video {v} frame {i}", root) for i, f in enumerate(frames or [])]
              for v, frames in enumerate(row.get("videos") or [])]
    if "video" in row_type and images and not is_image(images[0]):
        # Items of a video row are encoded video files, one per `<|video_pad|>`, unless they are frames.
        videos += [decode_video(data, f"video {i}") for i, data in enumerate(images)]
        images = []
    turns, repairs = repair_turns(row.get("conversations"))
    turns, placed = place_media(turns, len(images) + len(videos), IMAGE_PLACEHOLDER)
    sample = _build(row_id, turns, images, videos, row_type, _string_field(row, "data_source"),
                    parse_meta_info(row.get("meta_info")))
    return sample, repairs | placed


def rl_row_sample(row: dict[str, Any], row_id: str, root: ImageRoot, source: str) -> tuple[SpatialSample, set[str]]:
    """The sample of an RL parquet row: the question as the human turn, the answer as the gpt turn."""
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str):
        raise RowProblem(NON_STRING_VALUE, f"question is a {type(question).__name__}, not a string")
    answer = "" if answer is None else str(answer).strip()  # the converter writes str(answer).strip()
    if not answer:
        raise RowProblem(EMPTY_ANSWER, "the answer column is empty")
    meta = parse_meta_info(row.get("meta_info"))
    meta.setdefault("answer", answer)
    images = [image_bytes(item, f"image {i}", root) for i, item in enumerate(row.get("images") or [])]
    turns, placed = place_media([{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                                len(images), IMAGE_PLACEHOLDER)
    # VST's RL stage puts its think format prompt on every row except 3D detection ones.
    row_type = "bbox_3d" if "bbox3d" in _modes(meta) else "rl_thought"
    data_source = str(meta.get("data_source") or source)
    return _build(row_id, turns, images, [], row_type, data_source, meta), placed


def llava_row_sample(row: Any, row_id: str, root: ImageRoot) -> tuple[SpatialSample, set[str]]:
    """The sample of a LLaVA JSON row (`image`/`images`: paths under the root; `video`/`videos`: a video file,
    a folder of frames, or a list of frame paths, one per video)."""
    if not isinstance(row, dict):
        raise RowProblem(EMPTY_CONVERSATION, f"row is a {type(row).__name__}, not an object")
    image_refs = _as_list(row.get("images", row.get("image")))
    video_refs = _as_list(row.get("videos", row.get("video")))
    images = [image_bytes(item, f"image {i}", root) for i, item in enumerate(image_refs)]
    videos = [video_frames(item, f"video {i}", root) for i, item in enumerate(video_refs)]
    turns, repairs = repair_turns(row.get("conversations"))
    if videos and not images:
        # VST's video converter turns `<image>` in human turns into the video flag
        # (prepare_data/sft/convert_json_parquet_video.py).
        turns = [dict(t, value=t["value"].replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)) if t["from"] == "human"
                 else t for t in turns]
        turns, placed = place_media(turns, len(videos), VIDEO_PLACEHOLDER)
        default_type = "video"
    else:
        turns, placed = place_media(turns, len(images) + len(videos), IMAGE_PLACEHOLDER)
        default_type = "mm_qa" if images else ""
    row_type = _string_field(row, "type") or default_type
    sample = _build(row_id, turns, images, videos, row_type, _string_field(row, "data_source"),
                    parse_meta_info(row.get("meta_info")))
    return sample, repairs | placed


def repair_turns(turns: Any) -> tuple[list[dict[str, str]], set[str]]:
    """Turns as VST's loader keeps them: a leading non-human turn dropped, then empty turns and turns with
    other roles skipped. A gpt answer that is empty is an `empty_answer`, not a repair."""
    if not isinstance(turns, list) or not turns:
        raise RowProblem(EMPTY_CONVERSATION, "conversations is empty or missing")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not isinstance(turn.get("from"), str):
            raise RowProblem(NON_STRING_VALUE, f"turn {i} is not {{from: str, value: str}}: {turn!r:.80}")
    repairs: set[str] = set()
    if turns[0]["from"] != "human":
        turns = turns[1:]
        repairs.add(DROPPED_LEADING_TURN)
    if turns and turns[-1]["from"] == "gpt" and not turns[-1]["value"].strip():
        raise RowProblem(EMPTY_ANSWER, f"the last gpt turn (turn {len(turns) - 1}) is empty")
    kept = []
    for turn in turns:
        if not turn["value"].strip():
            repairs.add(DROPPED_EMPTY_TURN)
        elif turn["from"] not in ROLES:
            repairs.add(DROPPED_UNKNOWN_ROLE_TURN)
        else:
            kept.append({"from": turn["from"], "value": turn["value"]})
    if not kept:
        raise RowProblem(EMPTY_CONVERSATION, "no human/gpt turn with text is left")
    return kept, repairs


def place_media(turns: list[dict[str, str]], count: int, token: str) -> tuple[list[dict[str, str]], set[str]]:
    """Turns with VST's flags mapped to `<image>` / `<video>`; when the row has no usable placeholder for its
    `count` media, `token` prepended once per item to the first turn (VST's rule; counted as a repair)."""
    has_flags = any(IMAGE_FLAG in t["value"] or VIDEO_FLAG in t["value"] for t in turns)
    turns = [dict(t, value=t["value"].replace(IMAGE_FLAG, IMAGE_PLACEHOLDER).replace(VIDEO_FLAG, VIDEO_PLACEHOLDER))
             for t in turns]
    if has_flags or count == 0:
        return turns, set()
    text = "".join(t["value"] for t in turns)
    n_image, n_video = text.count(IMAGE_PLACEHOLDER), text.count(VIDEO_PLACEHOLDER)
    matches = n_image + n_video == count if token == VIDEO_PLACEHOLDER else (
        n_image == count or (n_image == 0 and n_video == 1))  # one `<video>` over all images: frames of a video
    later = "".join(t["value"] for t in turns[1:])
    if matches or IMAGE_PLACEHOLDER in later or VIDEO_PLACEHOLDER in later:
        return turns, set()  # kept as written; a mismatch left here is reported by the validator
    first = turns[0]["value"]
    for marker in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        first = first.replace(marker + "\n", "").replace("\n" + marker, "").replace(marker, "")
    turns[0] = dict(turns[0], value=token * count + first)
    return turns, {PREPENDED_PLACEHOLDERS}


def parse_meta_info(value: Any) -> dict[str, Any]:
    """`meta_info` as a dict: a JSON object as is, a JSON list under `"items"`, nothing as `{}`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise RowProblem(BAD_META_INFO, f"meta_info is not valid JSON ({error})") from error
    if isinstance(parsed, dict):
        return dict(parsed)
    if isinstance(parsed, list):
        return {"items": parsed}
    raise RowProblem(BAD_META_INFO, f"meta_info is a {type(parsed).__name__}, not a JSON object or list")


def _build(row_id: str, turns: list[dict[str, str]], images: list[bytes], videos: list[list[bytes]],
           row_type: str, data_source: str, meta: dict[str, Any]) -> SpatialSample:
    text = "".join(t["value"] for t in turns)
    if images and not videos and text.count(VIDEO_PLACEHOLDER) == 1 and IMAGE_PLACEHOLDER not in text:
        videos, images = [images], []  # a video row whose frames sit in the images column
    if "mode" in meta and "answer" not in meta and turns[-1]["from"] == "gpt":
        meta["answer"] = turns[-1]["value"].rpartition("</think>")[2].strip()
    return SpatialSample(id=row_id, conversations=turns, images=images, type=row_type, data_source=data_source,
                         meta_info=meta, videos=videos)


def _modes(meta: dict[str, Any]) -> list[str]:
    mode = meta.get("mode")
    return [str(m) for m in mode] if isinstance(mode, list) else [str(mode)] if mode else []


def _string_field(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise RowProblem(NON_STRING_VALUE, f"{key} is a {type(value).__name__}, not a string")
    return value or ""


def _as_list(value: Any) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
