"""Optional TorchScript export of the continuous action heads (`l1_chunk`, `flow`), checked against PyTorch.

What is exported is the part after the backbone, traced through the head's own `predict`: from the backbone's
last hidden states `[B, L, hidden]` and the prompt attention mask `[B, L]` (plus the starting noise `[B, H, A]`
for `flow`, whose K Euler steps are unrolled) to the normalised `[B, H, A]` chunk. A
deployment target (libtorch, an embedded runtime) runs the backbone however it likes and these on top. The
check feeds the real backbone's hidden states for a batch of observations to the traced module and compares
with the policy's own (normalised) `predict_action_chunk`. Our loader never reads these files: the served
policy's weights come from safetensors only.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

CONTINUOUS_HEADS = ("l1_chunk", "flow")


class _PrecomputedBackbone:
    """Stands in for the backbone inside `head.predict`: returns hidden states computed beforehand."""

    def __init__(self, hidden: Tensor) -> None:
        self.hidden = hidden

    def __call__(self, inputs: Any, state: Any = None, queries: Any = None) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.hidden)


class HeadDecoder(nn.Module):
    """A head's own `predict` over precomputed backbone hidden states, as one traceable module.

    Inputs: the backbone's last hidden states `[B, L, hidden]` (with the head's query tokens at the end for
    `l1_chunk`), the prompt attention mask `[B, L]`, and for `flow` the starting noise `[B, H, A]`.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: Tensor, attention_mask: Tensor, noise: Tensor | None = None) -> Tensor:
        inputs = SimpleNamespace(input_ids=attention_mask, attention_mask=attention_mask)
        kwargs = {} if noise is None else {"noise": noise}
        return self.head.predict(_PrecomputedBackbone(hidden), inputs, None, **kwargs)


def backbone_features(policy: Any, batch: dict[str, Any]) -> tuple[dict[str, Any], Any, Tensor]:
    """(pre-processed batch, backbone inputs, backbone last hidden states) of a raw batch, as the head sees them."""
    inner = policy.policy
    processed = policy.preprocessor(dict(batch))
    inputs, state = inner.prepare_inputs(processed)
    queries = getattr(inner.head, "queries", None)
    hidden = inner.vlm(inputs, state, queries).last_hidden_state.float()
    return processed, inputs, hidden


def export_head(policy: Any, batch: dict[str, Any], out_dir: str | Path, atol: float = 1e-4) -> dict[str, Any]:
    """Trace `policy`'s continuous head to `<out_dir>/<head>.torchscript.pt`; returns the check record."""
    inner = policy.policy
    name = inner.config.head
    if name not in CONTINUOUS_HEADS:
        raise ValueError(f"head {name!r} is not continuous: only {CONTINUOUS_HEADS} export to TorchScript")
    head = inner.head.eval()
    with torch.inference_mode():
        processed, inputs, hidden = backbone_features(policy, batch)
        args: tuple[Tensor, ...] = (hidden, inputs.attention_mask)
        if name == "flow":
            generator = torch.Generator().manual_seed(0)
            args += (torch.randn(hidden.shape[0], head.chunk_size, head.action_dim, generator=generator),)
        reference = inner.predict_action_chunk(processed, **({"noise": args[2]} if name == "flow" else {}))
        module = HeadDecoder(head)
    with torch.no_grad(), warnings.catch_warnings():
        # The flow head's sinusoidal embedding builds a constant tensor (max_period): safe to bake in.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, args, check_trace=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.torchscript.pt"
    traced.save(str(path))
    with torch.inference_mode():
        scripted = traced(*args)
    diff = float((scripted - reference).abs().max())
    record = {"head": name, "file": path.name, "max_abs_diff_vs_pytorch": diff, "atol": atol,
              "inputs": [list(a.shape) for a in args], "output": list(scripted.shape),
              "note": "normalised actions; unnormalise with normalization.json (action q01/q99 -> [-1, 1])"}
    if diff > atol:
        raise RuntimeError(f"TorchScript {name} head differs from PyTorch by {diff:.3g} (> {atol})")
    log.info("exported %s head to %s (max |diff| vs PyTorch %.2e)", name, path, diff)
    return record
