"""Readers for local copies of CV-Bench and VSI-Bench in their published formats, as `SpatialSample`s.

Nothing is downloaded: point the reader at a directory holding the files as published on the Hugging Face hub.

CV-Bench (`nyu-visionx/CV-Bench`), either layout works:

    CV-Bench/
      test_2d.parquet, test_3d.parquet     # columns: idx, type ("2D"/"3D"), task ("Count", "Relation", "Depth",
                                           # "Distance"), image ({bytes, path}), question, choices (list),
                                           # answer ("(A)"), prompt, filename, source, ...
      test_2d.jsonl, test_3d.jsonl         # the same rows without `image` ...
      img/2D/count/ade20k_10.png ...       # ... whose `filename` is the image path relative to the root
    (older snapshots: one test.parquet / test.jsonl with both types)

VSI-Bench (`nyu-visionx/VSI-Bench`):

    VSI-Bench/
      test.jsonl or *.parquet              # columns: id, dataset, scene_name, question_type, question,
                                           # options (["A. ...", ...] or null), ground_truth ("A" / "2.5")
      arkitscenes/<scene_name>.mp4         # the unzipped arkitscenes.zip, scannet.zip, scannetpp.zip
      scannet/<scene_name>.mp4
      scannetpp/<scene_name>.mp4

Skills are named `cvbench_<type>_<task>` and `vsibench_<question_type>`; multiple-choice answers are letters,
VSI-Bench's numeric answers are scored by MRA.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from spatial_tuning.sample import SpatialSample

log = logging.getLogger(__name__)

CV_BENCH_FILES = ("test_2d", "test_3d", "test")
VSI_NUMERIC_UNITS = {"object_counting": None, "object_abs_distance": "m", "object_size_estimation": "cm",
                     "room_size_estimation": "square meters"}
VSI_PRE_PROMPT = "These are frames of a video."
VSI_MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."
VSI_NUMERIC_POST_PROMPT = "Please answer the question using a single word or phrase."
CV_MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."


class BenchmarkFormatError(ValueError):
    """A benchmark file that does not match its published format; the message names the file and row."""


def _records(file: Path) -> Iterator[dict[str, Any]]:
    if file.suffix == ".parquet":
        yield from pd.read_parquet(file).to_dict(orient="records")
    else:
        with file.open() as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise BenchmarkFormatError(f"{file}:{line_no}: not valid JSON: {err}") from err


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkFormatError(f"{where}: missing column(s) {', '.join(missing)}")


def _letter(answer: Any, where: str) -> str:
    match = re.fullmatch(r"\s*\(?([A-Fa-f])\)?\.?\s*", str(answer))
    if not match:
        raise BenchmarkFormatError(f"{where}: answer {answer!r} is not an option letter like '(A)'")
    return match.group(1).upper()


def _listed(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


# --- CV-Bench --------------------------------------------------------------------------------------------


def _cv_bench_files(root: Path) -> list[Path]:
    for suffix in (".parquet", ".jsonl"):
        split = [root / f"{name}{suffix}" for name in ("test_2d", "test_3d") if (root / f"{name}{suffix}").is_file()]
        if split:
            return split
        if (root / f"test{suffix}").is_file():
            return [root / f"test{suffix}"]
    raise FileNotFoundError(f"{root}: no CV-Bench annotations (test_2d/test_3d/test .parquet or .jsonl)")


def _interleaved(rows: list[tuple[str, dict[str, Any]]], key: str, limit: int | None) -> list[tuple[str, dict[str, Any]]]:
    """The first `limit` rows taken round-robin over `row[key]`, so a small limit still covers every task."""
    if not limit or limit >= len(rows):
        return rows
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for where, row in rows:
        groups.setdefault(str(row.get(key)), []).append((where, row))
    picked: list[tuple[str, dict[str, Any]]] = []
    queues = [iter(g) for g in groups.values()]
    while len(picked) < limit and queues:
        for queue in list(queues):
            item = next(queue, None)
            if item is None:
                queues.remove(queue)
            elif len(picked) < limit:
                picked.append(item)
    return picked


def _all_rows(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{file} row {i}", row) for file in files for i, row in enumerate(_records(file))]


def _cv_image(row: dict[str, Any], root: Path, where: str) -> bytes:
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        return bytes(image["bytes"])
    path = root / str(row.get("filename") or (image or {}).get("path") or "")
    if not path.is_file():
        raise BenchmarkFormatError(f"{where}: image {path} not found (CV-Bench's `filename` is relative to {root})")
    return path.read_bytes()


def cv_bench_sample(row: dict[str, Any], root: Path, where: str) -> SpatialSample:
    """One CV-Bench row as a multiple-choice `SpatialSample`."""
    _require(row, ("idx", "type", "task", "question", "choices", "answer"), where)
    choices = _listed(row["choices"])
    letters = "ABCDEF"[: len(choices)]
    prompt = row.get("prompt") or (row["question"] + " Select from the following choices.\n"
                                   + "\n".join(f"({l}) {c}" for l, c in zip(letters, choices)))
    answer = _letter(row["answer"], where)
    if answer not in letters:
        raise BenchmarkFormatError(f"{where}: answer {answer} is outside the {len(choices)} choices")
    skill = f"cvbench_{row['type']}_{row['task']}".lower()
    return SpatialSample(
        id=f"cvbench-{row['type']}-{row['idx']}",
        conversations=[{"from": "human", "value": f"<image>\n{prompt}\n{CV_MC_POST_PROMPT}"},
                       {"from": "gpt", "value": f"({answer})"}],
        images=[_cv_image(row, root, where)], type=skill, data_source="CV-Bench",
        meta_info={"skill": skill, "mode": "multiple_choice", "answer": answer, "options": choices,
                   "benchmark": "CV-Bench", "source": row.get("source")},
    )


def read_cv_bench(root: str | Path, max_samples: int | None = None) -> list[SpatialSample]:
    """Samples of a local CV-Bench copy (2D and 3D splits); `max_samples` are spread over the tasks."""
    root = Path(root).expanduser()
    rows = _interleaved(_all_rows(_cv_bench_files(root)), "task", max_samples)
    samples = [cv_bench_sample(row, root, where) for where, row in rows]
    log.info("CV-Bench: %d samples from %s", len(samples), root)
    return samples


# --- VSI-Bench -------------------------------------------------------------------------------------------


def _vsi_annotation_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*.parquet")) or sorted(p for p in root.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{root}: no VSI-Bench annotations (test.jsonl or *.parquet)")
    return files


def video_frames(path: Path, num_frames: int, max_side: int = 448) -> list[bytes]:
    """`num_frames` frames sampled uniformly from a video, each resized to at most `max_side` and JPEG-encoded."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        total = reader.count_frames()
        if total <= 0:
            raise BenchmarkFormatError(f"{path}: video has no frames")
        frames = []
        for index in np.linspace(0, total - 1, num_frames).round().astype(int):
            image = Image.fromarray(reader.get_data(int(index))).convert("RGB")
            image.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            frames.append(buffer.getvalue())
        return frames
    finally:
        reader.close()


def vsi_bench_sample(row: dict[str, Any], root: Path, where: str, num_frames: int = 8) -> SpatialSample:
    """One VSI-Bench row as a video `SpatialSample` (multiple choice or numeric)."""
    _require(row, ("id", "dataset", "scene_name", "question_type", "question", "ground_truth"), where)
    video = root / str(row["dataset"]) / f"{row['scene_name']}.mp4"
    if not video.is_file():
        raise BenchmarkFormatError(f"{where}: video {video} not found (unzip {row['dataset']}.zip into {root})")
    options = _listed(row.get("options"))
    qtype = str(row["question_type"])
    if options:
        meta = {"mode": "multiple_choice", "answer": _letter(row["ground_truth"], where), "options": options}
        prompt = f"{row['question']}\nOptions:\n" + "\n".join(options) + f"\n{VSI_MC_POST_PROMPT}"
    else:
        try:
            value = float(str(row["ground_truth"]).replace(",", ""))
        except ValueError as err:
            raise BenchmarkFormatError(f"{where}: numeric ground_truth {row['ground_truth']!r} is not a number") from err
        meta = {"mode": "numeric", "answer": value, "unit": VSI_NUMERIC_UNITS.get(qtype)}
        prompt = f"{row['question']}\n{VSI_NUMERIC_POST_PROMPT}"
    skill = f"vsibench_{qtype}"
    return SpatialSample(
        id=f"vsibench-{row['id']}",
        conversations=[{"from": "human", "value": f"<video>\n{VSI_PRE_PROMPT}\n{prompt}"},
                       {"from": "gpt", "value": str(row["ground_truth"])}],
        videos=[video_frames(video, num_frames)], type=skill, data_source="VSI-Bench",
        meta_info={"skill": skill, **meta, "benchmark": "VSI-Bench", "scene_id": str(row["scene_name"])},
    )


def read_vsi_bench(root: str | Path, max_samples: int | None = None, num_frames: int = 8) -> list[SpatialSample]:
    """Samples of a local VSI-Bench copy; `max_samples` are spread over the question types, and frames are
    decoded only for the rows kept."""
    root = Path(root).expanduser()
    rows = _interleaved(_all_rows(_vsi_annotation_files(root)), "question_type", max_samples)
    samples = [vsi_bench_sample(row, root, where, num_frames=num_frames) for where, row in rows]
    log.info("VSI-Bench: %d samples from %s", len(samples), root)
    return samples
