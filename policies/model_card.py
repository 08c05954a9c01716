"""The model card (README.md) written into every export bundle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from policies.safety import ActionLimits
from policies.serving.protocol import ObservationSpec


def _fmt(values: Any) -> str:
    return "off" if values is None else "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _eval_section(eval_results: Any) -> list[str]:
    if eval_results is None:
        return ["No evaluation results were attached (`card.eval_results=<eval-sim metrics.json>`)."]
    if isinstance(eval_results, Mapping):
        rows = ["| metric | value |", "|---|---|"]
        for key, value in eval_results.items():
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            rows.append(f"| {key} | {shown} |")
        return rows
    return ["```json", json.dumps(eval_results, indent=2), "```"]


def render_model_card(summary: Mapping[str, Any], limits: ActionLimits, spec: ObservationSpec,
                      card: Mapping[str, Any], eval_results: Any) -> str:
    """Markdown model card: what the policy is, what it was trained and evaluated on, how a robot calls it."""
    required = spec.to_dict()["required"]
    inputs = [f"- `{key}`: {entry.get('dtype', entry.get('type'))} {entry.get('shape', '')}".rstrip()
              for key, entry in required.items()]
    lines = [
        f"# {card.get('name') or 'VST-VLA policy'}",
        "",
        f"A VST-VLA policy (Qwen2.5-VL backbone, `{summary['head']}` action head) exported by `vst-vla export`.",
        "Load it offline with `policies.export.load_bundle(path)`; serve it with `vst-vla serve bundle=<path>`",
        "(openpi websocket protocol, msgpack-numpy; robots use `openpi-client`).",
        "",
        "## Intended robot and use",
        f"- Robot: {card.get('robot') or 'not stated'}",
        f"- Control rate: {str(card['fps']) + ' Hz' if card.get('fps') else 'not stated'}",
        f"- Intended use: {card.get('intended_use') or 'research; supervise every run on real hardware'}",
        "",
        "## Training data",
        f"{card.get('training_data') or 'not stated (`card.training_data=...`)'}",
        *([f"- Training run: `{json.dumps(card['training_run'])}`"] if card.get("training_run") else []),
        "",
        "## Evaluation results",
        *_eval_section(eval_results),
        "",
        "## Policy",
        (f"- Head: `{summary['head']}`; chunk size {summary['chunk_size']}, {summary['n_action_steps']} actions "
        f"executed per chunk; action dim {summary['action_dim']}"),
        f"- Backbone at training time: `{summary['backbone_source']}` (weights included in `policy/model.safetensors`)",
        f"- Prompt: `{summary['prompt_template']}`; images resized to {summary['image_size']} px",
        "",
        "## Inputs (one request)",
        *inputs,
        "- `reset` (optional bool): start a new episode (drops queued actions and the rate limiter's history)",
        "",
        "## Action limits (enforced on every served action; clipped elements are counted in `safety`)",
        f"- low: {_fmt(limits.low)}",
        f"- high: {_fmt(limits.high)}",
        f"- max change per step: {_fmt(limits.max_delta)}",
    ]
    if limits.names:
        lines.append(f"- dimensions: {', '.join(limits.names)}")
    return "\n".join(lines) + "\n"
