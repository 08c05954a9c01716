"""A self-contained HTML page showing a few samples per skill (images, question, answer) to check by eye."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from spatial_tuning.sample import SpatialSample
from vst_vla.atomic import write_text

_STYLE = """body{font-family:sans-serif;margin:1.5em;background:#fafafa}h2{border-bottom:1px solid #ccc}
.sample{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.8em 0}
.imgs img{margin:2px;border:1px solid #999;image-rendering:pixelated}pre{white-space:pre-wrap;margin:.3em 0}
.q{color:#123}.a{color:#050;font-weight:bold}.meta{color:#666;font-size:.85em}"""


def _sample_html(sample: SpatialSample) -> str:
    images = "".join(f'<img src="data:image/png;base64,{base64.b64encode(b).decode()}" title="image {i + 1}">'
                     for i, b in enumerate(sample.images))
    question = next(t["value"] for t in sample.conversations if t["from"] == "human")
    meta = {k: sample.meta_info[k] for k in ("mode", "answer", "unit", "scene_id") if k in sample.meta_info}
    return (f'<div class="sample"><div class="imgs">{images}</div><div class="meta">{html.escape(sample.id)} · '
            f'type {html.escape(sample.type)}</div><pre class="q">{html.escape(question)}</pre>'
            f'<pre class="a">{html.escape(sample.answer)}</pre>'
            f'<div class="meta">meta_info: {html.escape(json.dumps(meta))}</div></div>')


def preview_html(samples: Sequence[SpatialSample], per_skill: int = 3) -> str:
    """The page: per skill, its first `per_skill` samples (one thought sample among them when there is one)."""
    by_skill: dict[str, list[SpatialSample]] = {}
    for sample in samples:
        by_skill.setdefault(sample.skill, []).append(sample)
    sections = []
    for skill, items in by_skill.items():
        chosen = items[:per_skill]
        thought = next((s for s in items if s.think), None)
        if thought is not None and thought not in chosen and chosen:
            chosen[-1] = thought
        body = "".join(_sample_html(s) for s in chosen)
        sections.append(f"<h2>{html.escape(skill)} ({len(items)} samples)</h2>{body}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>VST synth preview</title><style>{_STYLE}"
            f"</style></head><body><h1>VST synth preview</h1>{''.join(sections)}</body></html>")


def write_preview(samples: Sequence[SpatialSample], path: str | Path, per_skill: int = 3) -> Path:
    """Write the preview page for `samples` to `path` (atomically)."""
    return write_text(path, preview_html(samples, per_skill))
