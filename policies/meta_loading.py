"""Building a policy without initialising its weights, then filling it from its safetensors by assignment.

A saved policy's `model.safetensors` holds every weight, so the random initialisation of a 3B backbone before
the file is read is wasted work (tens of seconds, and a second copy of the weights in memory). `empty_parameters`
builds modules with their parameters on the meta device (no storage, no initialisation) while buffers are built
as usual, so the non-persistent ones (the rotary `inv_freq` tables, which no checkpoint holds) get their computed
values exactly as an eager build would. `assign_safetensors` then makes the loaded tensors the parameters
(`load_state_dict(assign=True)`), each cast to the dtype the module was built with; weights the file stores once
for two names (tied embeddings) are re-tied by the caller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

log = logging.getLogger(__name__)


class WeightsFileError(ValueError):
    """A weights file that does not fit the module built for it; the message names the file and the keys."""


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Within the block, new parameters live on the meta device (buffers are built normally).

    accelerate's `init_empty_weights(include_buffers=False)`: every registered parameter is moved to meta as it is
    created, so initialisers that run afterwards touch no memory. Weight tying done inside the block re-registers
    the parameter and so comes out untied: re-tie after loading."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def meta_tensor_names(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of `module` still on the meta device (none after a complete load)."""
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    return [name for name, tensor in tensors if tensor.is_meta]


def assign_safetensors(module: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> set[str]:
    """Load `path` into `module` by assignment, each tensor on `device` in the dtype of the module's own tensor.

    Returns the module's keys the file does not hold (the caller decides: tied aliases are fine, anything else is
    an error). A key the module does not have, or a shape that differs, raises `WeightsFileError` naming both."""
    path = Path(path)
    expected = module.state_dict(keep_vars=True)
    loaded: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as weights:
        names = list(weights.keys())
        unexpected = sorted(set(names) - expected.keys())
        if unexpected:
            raise WeightsFileError(f"{path}: {len(unexpected)} weights the policy does not have, e.g. "
                                   f"{', '.join(unexpected[:5])} (was it saved by another version or head?)")
        for key in names:
            tensor, target = weights.get_tensor(key), expected[key]
            if tuple(tensor.shape) != tuple(target.shape):
                raise WeightsFileError(f"{path}: weight {key} has shape {tuple(tensor.shape)}, the policy built from "
                                       f"its config.json expects {tuple(target.shape)}")
            loaded[key] = tensor.to(target.dtype)
    module.load_state_dict(loaded, strict=False, assign=True)
    return set(expected) - set(loaded)
