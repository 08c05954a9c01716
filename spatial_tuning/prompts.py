"""VST's prompts, so the published `rayruiyang/VST-*` checkpoints are prompted the way they were trained.

- SFT (VST `vst/preprocess.py`): every sample gets a system message, the think system prompt when its `type`
  contains "thought", else the default one.
- RL (VST `projects/spatial_rl`, config `examples/config_vlm3d_reasoner.yaml`): the format prompt
  `examples/format_prompt/vlm3d_reasoner.jinja` is the system message (`think_prompt_in_system: true`) and the
  question is the user turn unchanged; rows whose modes include `bbox3d` get no format prompt, so the chat
  template's default system prompt applies and their answer is plain JSON.
- Inference (VST README): the think system prompt when thinking is wanted, else the default.

VST ships the same text as its README's `THINK_SYSTEM_PROMPT` and as `vlm3d_reasoner.jinja`, so the SFT think prompt
and the RL format prompt are one string here. The default system prompt is the one VST's benchmark scripts
(`benchmark/eval_vsibench.py`) and Qwen2.5-VL's chat template use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spatial_tuning.rewards import is_box_row

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
THINK_SYSTEM_PROMPT = (
    "You are a helpful assistant. You should first think about the reasoning process in the mind and then provide "
    "the user with the answer. The reasoning process is enclosed within <think> </think> tags, i.e. <think> "
    "reasoning process here </think> answer here."
)
VLM3D_REASONER_PROMPT = THINK_SYSTEM_PROMPT  # the text of VST's examples/format_prompt/vlm3d_reasoner.jinja

# `prompt.format` values, how RL and evaluation prompt a row on top of `think`:
#   vlm3d_reasoner: VST's RL prompting: rows whose modes include bbox3d (3D detection) never get the think prompt;
#   none: every row follows `think`.
PROMPT_FORMATS = ("vlm3d_reasoner", "none")


def system_prompt(think: bool) -> str:
    """The system prompt of a sample with (`think=True`) or without the think prompt."""
    return THINK_SYSTEM_PROMPT if think else DEFAULT_SYSTEM_PROMPT


def uses_think_prompt(meta_info: Mapping[str, Any], sample_think: bool, prompt_format: str = "vlm3d_reasoner",
                      think: bool | None = True) -> bool:
    """Whether a row is prompted with the think (format) prompt, and so expected to answer `<think>...</think>`.

    `think`: True or False for every row, None for the sample's own flag (`type` contains "thought");
    `prompt_format="vlm3d_reasoner"` then leaves 3D-detection rows without it, as VST's RL does.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt.format={prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
    wanted = sample_think if think is None else bool(think)
    return wanted and not (prompt_format == "vlm3d_reasoner" and is_box_row(meta_info))
