"""`SpatialSample`: the one sample type every spatial stage consumes (SFT, RL, evaluation).

It mirrors a VST parquet row (ShareGPT-like `conversations`, encoded `images`, `type`, `data_source`,
`meta_info`), so our generated data and the released VST-P / VST-R files read into the same thing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# VST's system prompts live in prompts.py; re-exported here, where samples pick theirs.
from spatial_tuning.prompts import DEFAULT_SYSTEM_PROMPT, THINK_SYSTEM_PROMPT

# Inside this stack a conversation marks its images and videos with these; the readers map VST's release flags
# (`<|image_pad|>`, `<|video_pad|>`) onto them and the parquet writer maps them back (`spatial_tuning.vst_rows`).
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


@dataclass
class SpatialSample:
    """One spatial sample. `images` holds encoded image bytes (PNG/JPEG), one per `<image>` placeholder in
    order; `videos` holds one list of encoded frames per `<video>` placeholder."""

    id: str
    conversations: list[dict[str, str]]  # [{"from": "human" | "gpt", "value": str}, ...]
    images: list[bytes] = field(default_factory=list)
    type: str = ""
    data_source: str = ""
    meta_info: dict[str, Any] = field(default_factory=dict)
    videos: list[list[bytes]] = field(default_factory=list)

    @property
    def think(self) -> bool:
        """Whether this sample uses the think system prompt (`type` contains "thought")."""
        return "thought" in self.type

    @property
    def skill(self) -> str:
        """The skill name used for per-skill reports: `meta_info["skill"]`, else VST's `question_type` (RL rows),
        else `type` without "_thought"."""
        return str(self.meta_info.get("skill") or self.meta_info.get("question_type")
                   or self.type.replace("_thought", "") or "unknown")

    def pil_images(self) -> list[Image.Image]:
        return [Image.open(io.BytesIO(b)).convert("RGB") for b in self.images]

    def pil_videos(self) -> list[list[Image.Image]]:
        return [[Image.open(io.BytesIO(b)).convert("RGB") for b in frames] for frames in self.videos]

    def system_prompt(self, think: bool | None = None) -> str:
        return THINK_SYSTEM_PROMPT if (self.think if think is None else think) else DEFAULT_SYSTEM_PROMPT

    def messages(self, think: bool | None = None, include_answer: bool = True) -> list[dict[str, Any]]:
        """The conversation as Hugging Face chat messages, images and videos placed where their placeholders
        are. With `include_answer=False` the final assistant turn is left out (a prompt for generation)."""
        turns = self.conversations
        if not include_answer and turns and turns[-1]["from"] == "gpt":
            turns = turns[:-1]
        messages: list[dict[str, Any]] = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt(think)}]}]
        for turn in turns:
            role = "user" if turn["from"] == "human" else "assistant"
            messages.append({"role": role, "content": _split_placeholders(turn["value"])})
        return messages

    @property
    def prompt_text(self) -> str:
        """The first human turn, placeholders removed (for logs and reports)."""
        value = next((t["value"] for t in self.conversations if t["from"] == "human"), "")
        return value.replace(IMAGE_PLACEHOLDER, "").replace(VIDEO_PLACEHOLDER, "").strip()

    @property
    def answer(self) -> str:
        """The last assistant turn (the reference answer)."""
        return next((t["value"] for t in reversed(self.conversations) if t["from"] == "gpt"), "")


def _split_placeholders(text: str) -> list[dict[str, Any]]:
    """Split text at `<image>` / `<video>` placeholders into chat-template content parts."""
    parts: list[dict[str, Any]] = []
    rest = text
    while rest:
        positions = [(rest.find(tag), tag) for tag in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER) if tag in rest]
        if not positions:
            parts.append({"type": "text", "text": rest})
            break
        index, tag = min(positions)
        if index > 0:
            parts.append({"type": "text", "text": rest[:index]})
        parts.append({"type": "image" if tag == IMAGE_PLACEHOLDER else "video"})
        rest = rest[index + len(tag):].lstrip("\n") if index + len(tag) < len(rest) else ""
    return parts
