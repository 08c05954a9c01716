"""Run-time choices that depend on the machine: device, dtype, attention kernel, MuJoCo renderer.

GPU paths (bf16, flash-attention) are chosen here at run time, so every module stays importable on CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

import torch

from vst_vla.errors import UnsupportedHereError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_ATTENTION = {"sdpa", "eager", "flash_attention_2", "flash_attention_3"}


def resolve_device(device: str | None = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else is passed to `torch.device`."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on GPU (when supported) and fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is not one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def flash_attention_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def resolve_attention(attn_implementation: str | None, device: torch.device) -> str:
    """`auto` is flash_attention_2 when CUDA and flash-attn are present, else sdpa."""
    if attn_implementation in (None, "auto"):
        return "flash_attention_2" if device.type == "cuda" and flash_attention_available() else "sdpa"
    if attn_implementation not in _ATTENTION:
        raise ValueError(f"model.attn_implementation={attn_implementation!r} is not one of auto, "
                         f"{', '.join(sorted(_ATTENTION))}")
    if attn_implementation.startswith("flash") and not flash_attention_available():
        raise UnsupportedHereError(f"model.attn_implementation={attn_implementation} needs CUDA and the flash-attn "
                           "package (pip install '.[gpu]'); use auto or sdpa on this machine")
    return attn_implementation


# --- MuJoCo offscreen rendering -------------------------------------------------------------------------

_RENDERER_PACKAGES = {"egl": "libegl1 + libegl-mesa0 (Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)",
                      "osmesa": "libosmesa6 (Debian: apt-get install libosmesa6)"}
_PROBE = ("import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\".1\"/></worldbody>"
          "</mujoco>'); r = mujoco.Renderer(m, 8, 8); r.update_scene(mujoco.MjData(m)); r.render(); r.close()")


def _renderer_works(backend: str) -> tuple[bool, str]:
    # A failed GL backend can abort the interpreter, so each one is probed in a child process.
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def select_mujoco_renderer(candidates: tuple[str, ...] = ("egl", "osmesa")) -> str:
    """Choose the MuJoCo offscreen backend at start-up and export it as `MUJOCO_GL`.

    An explicit `MUJOCO_GL` in the environment is respected. Otherwise EGL is tried, then OSMesa; when neither
    renders, the error names the system packages that provide them.
    """
    if os.environ.get("VST_VLA_RENDERER_CHECKED") == os.environ.get("MUJOCO_GL") and os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    requested = os.environ.get("MUJOCO_GL")
    order = (requested,) if requested else candidates
    errors = []
    for backend in order:
        ok, err = _renderer_works(backend)
        if ok:
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            os.environ["VST_VLA_RENDERER_CHECKED"] = backend
            return backend
        errors.append(f"{backend}: {err or 'failed'}; needs {_RENDERER_PACKAGES.get(backend, 'a working GL')}")
    raise RuntimeError("No MuJoCo offscreen renderer works on this machine.\n  " + "\n  ".join(errors)
                       + "\nInstall one of the packages above, or set MUJOCO_GL to a backend that works.")

