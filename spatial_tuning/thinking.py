"""How a chat template's thinking switch meets our think rows.

Qwen3.5 templates (TRL's `qwen3_5_nothink` / `qwen3_5_think`, the released tokenizers) end a generation prompt with
think tags chosen by the `enable_thinking` template kwarg: the no-think flavour closes an empty block
(`<think>\\n\\n</think>\\n\\n`) unless `enable_thinking=True`, the think flavour opens one (`<think>\\n`) unless
`enable_thinking=False`. A think row (prompted with the think system prompt) rendered without the switch would find
its think block already closed, empty, in the prompt: its completion could never earn the think format. Rendered
with `enable_thinking=True`, the block is opened in the prompt, so the completion holds the reasoning and the
closing tag only; the reply we score is the opening plus the completion. Templates without the switch (Qwen2.5-VL,
Qwen3-VL) are rendered and scored as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

THINKING_SWITCH = "enable_thinking"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_EMPTY_THINK_BLOCK = re.compile(r"\A\s*<think>\s*</think>\s*")


def _template_text(processor_or_tokenizer: Any) -> str:
    template = getattr(processor_or_tokenizer, "chat_template", None)
    if template is None:  # a processor may keep its template on the tokenizer only
        template = getattr(getattr(processor_or_tokenizer, "tokenizer", None), "chat_template", None)
    if isinstance(template, dict):  # named templates ("default", "tool_use", ...)
        return "\n".join(t for t in template.values() if isinstance(t, str))
    return template or ""


def has_thinking_switch(processor_or_tokenizer: Any) -> bool:
    """Whether the chat template reads the `enable_thinking` kwarg."""
    return THINKING_SWITCH in _template_text(processor_or_tokenizer)


def template_kwargs(processor_or_tokenizer: Any, wants_think: Iterable[bool]) -> dict[str, Any]:
    """Chat-template kwargs for prompts of rows whose think flags are `wants_think`: `enable_thinking` on when any
    row wants to think (one switch for all of them: TRL's GRPOTrainer has only a global one), `{}` for templates
    without the switch."""
    if not has_thinking_switch(processor_or_tokenizer):
        return {}
    return {THINKING_SWITCH: any(bool(w) for w in wants_think)}


def generation_opening(processor: Any, kwargs: dict[str, Any]) -> str:
    """What the template writes after the assistant header of a generation prompt rendered with `kwargs`: an opened
    think block (`<think>\\n`), a closed empty one, or `""`. Found by rendering a one-message chat with and without
    the generation prompt; the opening is that suffix from its first `<think>` on (the rest is the role header)."""
    chat = [{"role": "user", "content": [{"type": "text", "text": "?"}]}]
    bare = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=False, **kwargs)
    prompted = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **kwargs)
    if not prompted.startswith(bare):
        raise ValueError("the chat template's generation prompt does not extend the rendered chat: "
                         f"{bare[-80:]!r} vs {prompted[-80:]!r}")
    suffix = prompted[len(bare):]
    return suffix[suffix.index(_THINK_OPEN):] if _THINK_OPEN in suffix else ""


def opens_think_block(opening: str) -> bool:
    """Whether a generation opening leaves a think block open for the completion to close."""
    return _THINK_OPEN in opening and _THINK_CLOSE not in opening.rpartition(_THINK_OPEN)[2]


def assistant_reply(opening: str, completion: str, wants_think: bool) -> str:
    """The reply to score: the completion, behind the opening when that opened a think block (the `<think>` the
    prompt wrote is part of the reply). A closed empty block in the prompt is the template's, not the model's, so it
    is not prepended. Where the template writes think tags, a non-think row's leading empty think block is dropped,
    so a non-think row earns the plain-answer format by closing an opened block at once and answering."""
    reply = opening + completion if opens_think_block(opening) else completion
    if not wants_think and _THINK_OPEN in opening:
        reply = _EMPTY_THINK_BLOCK.sub("", reply, count=1)
    return reply
