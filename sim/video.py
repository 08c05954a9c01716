"""mp4 videos of rollout episodes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vst_vla.atomic import write_bytes


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30, upscale: int = 1) -> Path:
    """Encode uint8 HxWx3 frames as an H.264 mp4 (atomically); `upscale` repeats pixels for small frames."""
    import imageio.v3 as iio

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    video = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    if upscale > 1:
        video = video.repeat(upscale, axis=1).repeat(upscale, axis=2)
    # H.264 wants even sides; pad rather than rescale so pixels stay as the policy saw them.
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    data = iio.imwrite("<bytes>", video, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return write_bytes(path, data)
