"""The VST parquet row format: `SpatialSample` <-> row dict, and an atomic parquet writer.

An SFT row is ShareGPT-like, as VST writes it (`docs/train.md`, `prepare_data/sft/convert_json_parquet.py`):
`id: str`, `conversations: [{from, value}]`, `data_source: str`, `images: [{bytes, path}]` (encoded PNG/JPEG),
`type: str`, `meta_info: str` (JSON). The text carries VST's flags, one `<|image_pad|>` per image in order
(`<|video_pad|>` per video); inside this stack a sample uses `<image>` / `<video>` and the reader maps them
back. Our `meta_info` is a JSON object (skill, mode, answer, ...): VST's SFT loader never reads it, and its
RL loader wants an object with `mode`. Rows of samples with videos carry an extra
`videos: [[{bytes, path}]]` column (one frame list per `<video>`), which VST's loader ignores.

VST's RL parquet shape (`id, images, question, answer, meta_info`) is read by `spatial_tuning.readers`; we do
not write it (our RL stage reads these SFT rows, whose ground truth sits in `meta_info`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spatial_tuning.sample import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, SpatialSample
from spatial_tuning.vst_rows import IMAGE_FLAG, VIDEO_FLAG
from vst_vla.atomic import write_bytes

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURN_STRUCT = pa.struct([("from", pa.string()), ("value", pa.string())])

VST_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("conversations", pa.list_(TURN_STRUCT)),
    ("data_source", pa.string()),
    ("images", pa.list_(IMAGE_STRUCT)),
    ("type", pa.string()),
    ("meta_info", pa.string()),
])
VIDEO_FIELD = pa.field("videos", pa.list_(pa.list_(IMAGE_STRUCT)))

# Row groups this size keep a reader's memory bounded on large files without hurting small ones.
ROW_GROUP_SIZE = 256


def _image_struct(data: bytes, path: str) -> dict[str, Any]:
    return {"bytes": data, "path": path}


def release_text(text: str) -> str:
    """`text` with this stack's `<image>` / `<video>` placeholders written as VST's flags."""
    return text.replace(IMAGE_PLACEHOLDER, IMAGE_FLAG).replace(VIDEO_PLACEHOLDER, VIDEO_FLAG)


def _images_column(sample: SpatialSample) -> list[dict[str, Any]]:
    return [_image_struct(b, f"{sample.id}_{i}.png") for i, b in enumerate(sample.images)]


def sample_to_row(sample: SpatialSample) -> dict[str, Any]:
    """The VST SFT row of `sample`: VST's flags, images as `{bytes, path}` structs, `meta_info` as JSON."""
    row: dict[str, Any] = {
        "id": sample.id,
        "conversations": [{"from": t["from"], "value": release_text(t["value"])} for t in sample.conversations],
        "data_source": sample.data_source,
        "images": _images_column(sample),
        "type": sample.type,
        "meta_info": json.dumps(sample.meta_info, sort_keys=True, ensure_ascii=False),
    }
    if sample.videos:
        row["videos"] = [[_image_struct(b, f"{sample.id}_v{v}_{f}.png") for f, b in enumerate(frames)]
                         for v, frames in enumerate(sample.videos)]
    return row


def samples_to_table(samples: Sequence[SpatialSample]) -> pa.Table:
    """An Arrow table in the VST schema (plus `videos` when any sample has videos)."""
    rows = [sample_to_row(s) for s in samples]
    schema = VST_SCHEMA
    if any("videos" in r for r in rows):
        schema = schema.append(VIDEO_FIELD)
        for r in rows:
            r.setdefault("videos", [])
    return pa.Table.from_pylist(rows, schema=schema)


def write_parquet(samples: Iterable[SpatialSample], path: str | Path) -> Path:
    """Write `samples` as one VST SFT parquet file, atomically (the file appears complete or not at all).

    The bytes depend only on the samples, so the same samples give the same file.
    """
    table = samples_to_table(list(samples))
    buffer = io.BytesIO()
    # Images are already compressed PNG; zstd still shrinks the text columns and the PNG headers.
    pq.write_table(table, buffer, compression="zstd", row_group_size=ROW_GROUP_SIZE)
    return write_bytes(path, buffer.getvalue())
