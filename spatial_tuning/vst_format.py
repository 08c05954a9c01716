"""The VST parquet row format: `SpatialSample` <-> row dict, and an atomic parquet writer.

A row is ShareGPT-like, as in the released VST-P / VST-R files:
`id: str`, `conversations: [{from, value}]`, `data_source: str`, `images: [{bytes, path}]` (encoded PNG/JPEG),
`type: str`, `meta_info: str` (a JSON object). One `<image>` placeholder per image, in order. Rows of
samples with videos carry an extra `videos: [[{bytes, path}]]` column (one frame list per `<video>`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spatial_tuning.sample import SpatialSample
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


def sample_to_row(sample: SpatialSample) -> dict[str, Any]:
    """The VST row of `sample`: images as `{bytes, path}` structs, `meta_info` as a JSON string."""
    row: dict[str, Any] = {
        "id": sample.id,
        "conversations": [{"from": t["from"], "value": t["value"]} for t in sample.conversations],
        "data_source": sample.data_source,
        "images": [_image_struct(b, f"{sample.id}_{i}.png") for i, b in enumerate(sample.images)],
        "type": sample.type,
        "meta_info": json.dumps(sample.meta_info, sort_keys=True, ensure_ascii=False),
    }
    if sample.videos:
        row["videos"] = [[_image_struct(b, f"{sample.id}_v{v}_{f}.png") for f, b in enumerate(frames)]
                         for v, frames in enumerate(sample.videos)]
    return row


def row_to_sample(row: dict[str, Any]) -> SpatialSample:
    """The `SpatialSample` of a well-formed row (no validation: `spatial_tuning.readers` validates)."""
    meta = row.get("meta_info")
    meta_info = json.loads(meta) if isinstance(meta, str) and meta.strip() else (meta or {})
    return SpatialSample(
        id=str(row["id"]),
        conversations=[{"from": t["from"], "value": t["value"]} for t in row["conversations"]],
        images=[img["bytes"] for img in row.get("images") or []],
        type=row.get("type") or "",
        data_source=row.get("data_source") or "",
        meta_info=dict(meta_info),
        videos=[[f["bytes"] for f in frames] for frames in row.get("videos") or []],
    )


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
    """Write `samples` as one VST parquet file, atomically (the file appears complete or not at all).

    The bytes depend only on the samples, so the same samples give the same file.
    """
    table = samples_to_table(list(samples))
    buffer = io.BytesIO()
    # Images are already compressed PNG; zstd still shrinks the text columns and the PNG headers.
    pq.write_table(table, buffer, compression="zstd", row_group_size=ROW_GROUP_SIZE)
    return write_bytes(path, buffer.getvalue())
