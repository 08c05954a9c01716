"""Validating readers for spatial data: VST parquet files and LLaVA-style JSON with an image folder.

Both yield `SpatialSample`s, the one type the SFT, RL and evaluation stages consume. A bad row raises
`BadSampleError` naming the file, the row id and the reason; with `on_bad_sample="skip"` it is skipped and
counted per reason in a `SampleReport` (logged at the end), so nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from spatial_tuning.sample import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, SpatialSample

log = logging.getLogger(__name__)

# Reasons a row is rejected; the report counts skipped rows under these names.
MISSING_IMAGE = "missing_image"
UNDECODABLE_IMAGE = "undecodable_image"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
VIDEO_COUNT_MISMATCH = "video_count_mismatch"
EMPTY_CONVERSATION = "empty_conversation"
NON_ALTERNATING_CONVERSATION = "non_alternating_conversation"
NON_STRING_VALUE = "non_string_value"
BAD_META_INFO = "bad_meta_info"
REASONS = (MISSING_IMAGE, UNDECODABLE_IMAGE, IMAGE_COUNT_MISMATCH, VIDEO_COUNT_MISMATCH, EMPTY_CONVERSATION,
           NON_ALTERNATING_CONVERSATION, NON_STRING_VALUE, BAD_META_INFO)

_JSON_SUFFIXES = {".json", ".jsonl"}
_BATCH_ROWS = 256


class BadSampleError(ValueError):
    """A row that cannot become a valid `SpatialSample`; names the file, the row id and the reason."""

    def __init__(self, file: str | Path, row_id: str, reason: str, detail: str) -> None:
        self.file, self.row_id, self.reason, self.detail = str(file), row_id, reason, detail
        super().__init__(f"{file}: row id {row_id!r}: {reason}: {detail}")


@dataclass
class SampleReport:
    """What a load kept and skipped: skipped rows counted per reason, with the first messages of each."""

    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, error: BadSampleError) -> None:
        self.skipped[error.reason] += 1
        kept = self.examples.setdefault(error.reason, [])
        if len(kept) < 3:
            kept.append(str(error))

    def summary(self) -> str:
        """One line per reason, for the log at the end of a load."""
        head = f"loaded {self.loaded} samples from {len(self.files)} file(s), skipped {self.total_skipped}"
        lines = [head] + [f"  {reason}: {n} (e.g. {self.examples[reason][0]})" for reason, n in
                          sorted(self.skipped.items())]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "skipped": dict(self.skipped), "examples": self.examples,
                "files": self.files}


def load_samples(paths: str | Path | list, on_bad_sample: str = "error", image_root: str | Path | None = None,
                 decode_images: bool = True) -> list[SpatialSample]:
    """Read samples from parquet files, directories of them, or LLaVA-style JSON (images under `image_root`,
    default the JSON file's folder). `on_bad_sample` is "error" (raise `BadSampleError`) or "skip"."""
    samples, _ = load_samples_with_report(paths, on_bad_sample, image_root, decode_images)
    return samples


def load_samples_with_report(paths: str | Path | list, on_bad_sample: str = "error",
                             image_root: str | Path | None = None,
                             decode_images: bool = True) -> tuple[list[SpatialSample], SampleReport]:
    """Like `load_samples`, also returning the `SampleReport` of kept and skipped rows."""
    if on_bad_sample not in {"error", "skip"}:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; expected 'error' or 'skip'")
    report = SampleReport()
    samples: list[SpatialSample] = []
    for file in resolve_files(paths):
        report.files.append(str(file))
        for row_id, build in _row_builders(file, image_root):
            try:
                sample = build()
                validate_sample(sample, file, decode_images)
            except BadSampleError as error:
                if on_bad_sample == "error":
                    raise
                report.add_skip(error)
                continue
            samples.append(sample)
    report.loaded = len(samples)
    if report.total_skipped:
        log.warning("spatial data: %s", report.summary())
    else:
        log.info("spatial data: loaded %d samples from %d file(s)", report.loaded, len(report.files))
    return samples, report


def resolve_files(paths: str | Path | list) -> list[Path]:
    """Data files named by `paths`: parquet/JSON files as given, directories searched for `*.parquet`
    (recursively), else for top-level `*.json` / `*.jsonl`."""
    items = paths if isinstance(paths, (list, tuple)) else [paths]
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("*.parquet")) or sorted(p for p in path.iterdir() if p.suffix in _JSON_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: directory holds no *.parquet, *.json or *.jsonl files")
            files += found
        elif path.is_file():
            if path.suffix != ".parquet" and path.suffix not in _JSON_SUFFIXES:
                raise ValueError(f"{path}: unsupported data file (expected .parquet, .json or .jsonl)")
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def _row_builders(file: Path, image_root: str | Path | None):
    """Yield (row id, thunk building the sample) for every row of `file`; thunks raise `BadSampleError`."""
    rows = _parquet_rows if file.suffix == ".parquet" else _json_rows
    yield from rows(file, Path(image_root) if image_root else file.parent)


def _parquet_rows(file: Path, root: Path):
    parquet = pq.ParquetFile(file)
    columns = set(parquet.schema_arrow.names)
    if "conversations" not in columns:
        raise ValueError(f"{file}: not a VST parquet file (no 'conversations' column; columns: {sorted(columns)})")
    index = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            row_id = str(row.get("id") if row.get("id") is not None else f"#{index}")
            yield row_id, (lambda row=row, row_id=row_id: _row_sample(row, row_id, file, root))
            index += 1


def _json_rows(file: Path, root: Path):
    try:
        text = file.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" \
            else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON: {error}") from error
    if not isinstance(rows, list):
        raise TypeError(f"{file}: expected a JSON list of samples, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        row_id = str(row.get("id", f"#{index}")) if isinstance(row, dict) else f"#{index}"
        yield row_id, (lambda row=row, row_id=row_id: _json_sample(row, row_id, file, root))


def _json_sample(row: Any, row_id: str, file: Path, root: Path) -> SpatialSample:
    if not isinstance(row, dict):
        raise BadSampleError(file, row_id, EMPTY_CONVERSATION, f"row is a {type(row).__name__}, not an object")
    images = row.get("images", row.get("image")) or []
    images = [images] if isinstance(images, str) else images
    videos = row.get("videos", row.get("video")) or []
    videos = [videos] if videos and isinstance(videos[0], str) else videos
    converted = dict(row, images=images, videos=videos)
    return _row_sample(converted, row_id, file, root)


def _row_sample(row: dict[str, Any], row_id: str, file: Path, root: Path) -> SpatialSample:
    """Build a sample from a parquet or JSON row, resolving images and parsing `meta_info`."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadSampleError(file, row_id, EMPTY_CONVERSATION, "conversations is empty or missing")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not isinstance(turn.get("from"), str):
            raise BadSampleError(file, row_id, NON_STRING_VALUE, f"turn {i} is not {{from: str, value: str}}: {turn!r:.80}")
    for key in ("type", "data_source"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise BadSampleError(file, row_id, NON_STRING_VALUE, f"{key} is a {type(row[key]).__name__}, not a string")
    images = [_image_bytes(item, f"image {i}", row_id, file, root) for i, item in enumerate(row.get("images") or [])]
    videos = [[_image_bytes(item, f"video {v} frame {f}", row_id, file, root) for f, item in enumerate(frames or [])]
              for v, frames in enumerate(row.get("videos") or [])]
    text = "".join(t["value"] for t in turns)
    if images and not videos and text.count(VIDEO_PLACEHOLDER) == 1 and IMAGE_PLACEHOLDER not in text:
        videos, images = [images], []  # a video row whose frames sit in the images column
    return SpatialSample(id=row_id, conversations=[{"from": t["from"], "value": t["value"]} for t in turns],
                         images=images, type=row.get("type") or "", data_source=row.get("data_source") or "",
                         meta_info=_meta_info(row.get("meta_info"), row_id, file), videos=videos)


def _meta_info(value: Any, row_id: str, file: Path) -> dict[str, Any]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise BadSampleError(file, row_id, BAD_META_INFO, f"meta_info is a {type(value).__name__}, not a JSON string")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise BadSampleError(file, row_id, BAD_META_INFO, f"meta_info is not valid JSON ({error})") from error
    if not isinstance(parsed, dict):
        raise BadSampleError(file, row_id, BAD_META_INFO, f"meta_info is a JSON {type(parsed).__name__}, not an object")
    return parsed


def _image_bytes(item: Any, what: str, row_id: str, file: Path, root: Path) -> bytes:
    """Encoded bytes of one image given as bytes, a {bytes, path} struct, or a path under `root`."""
    data, path = (item.get("bytes"), item.get("path")) if isinstance(item, dict) else (None, item)
    if isinstance(item, (bytes, bytearray)):
        data, path = bytes(item), None
    if data:
        return bytes(data)
    if not isinstance(path, str) or not path:
        raise BadSampleError(file, row_id, MISSING_IMAGE, f"{what} has neither bytes nor a path")
    full = Path(path) if Path(path).is_absolute() else root / path
    if not full.is_file():
        raise BadSampleError(file, row_id, MISSING_IMAGE, f"{what}: file {full} not found")
    return full.read_bytes()


def validate_sample(sample: SpatialSample, file: str | Path = "<memory>", decode_images: bool = True) -> None:
    """Raise `BadSampleError` unless `sample` has alternating human/gpt turns ending in an answer, one image
    per `<image>` (and one video per `<video>`) placeholder, and decodable images."""
    turns = sample.conversations
    if not turns:
        raise BadSampleError(file, sample.id, EMPTY_CONVERSATION, "no turns")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise BadSampleError(file, sample.id, NON_ALTERNATING_CONVERSATION,
                                 f"turn {i} is from {turn['from']!r}, expected {expected!r} (human, gpt, ...)")
    if turns[-1]["from"] != "gpt":
        raise BadSampleError(file, sample.id, NON_ALTERNATING_CONVERSATION, "the last turn is not a gpt answer")
    text = "".join(t["value"] for t in turns)
    if text.count(IMAGE_PLACEHOLDER) != len(sample.images):
        raise BadSampleError(file, sample.id, IMAGE_COUNT_MISMATCH, f"{text.count(IMAGE_PLACEHOLDER)} "
                             f"{IMAGE_PLACEHOLDER} placeholders but {len(sample.images)} images")
    if text.count(VIDEO_PLACEHOLDER) != len(sample.videos):
        raise BadSampleError(file, sample.id, VIDEO_COUNT_MISMATCH, f"{text.count(VIDEO_PLACEHOLDER)} "
                             f"{VIDEO_PLACEHOLDER} placeholders but {len(sample.videos)} videos")
    if decode_images:
        for i, data in enumerate([*sample.images, *(f for frames in sample.videos for f in frames)]):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
            except Exception as error:  # PIL raises several unrelated types for corrupt data
                raise BadSampleError(file, sample.id, UNDECODABLE_IMAGE, f"image {i}: {error}") from error
