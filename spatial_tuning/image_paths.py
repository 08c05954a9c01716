"""Image and video references of a data row, turned into encoded bytes without leaving the image root.

A row names an image as encoded bytes, a `{bytes, path}` struct (VST parquet), or a path (LLaVA JSON, or a
struct whose bytes are empty). A path is resolved under the image root with symlinks followed; one that ends
up outside the root is refused before anything is opened, and an absolute path is refused unless the caller
allows absolute paths explicitly. VST's own loaders join paths without checking
(`prepare_data/sft/convert_json_parquet.py`, `projects/spatial_rl/verl/utils/dataset.py`); a data file must
not be able to make us read `/etc` or a neighbour's home directory.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from spatial_tuning.row_problems import MISSING_IMAGE, UNDECODABLE_IMAGE, UNSAFE_IMAGE_PATH, RowProblem

_FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
# Video files are sampled at VST's training rate (`vst/preprocess.py` SampleTransform fps=2), capped so one
# long clip cannot fill memory.
VIDEO_FPS = 2.0
MAX_VIDEO_FRAMES = 32


@dataclass(frozen=True)
class ImageRoot:
    """Where relative image paths resolve, and whether absolute paths are allowed at all."""

    root: Path
    allow_absolute: bool = False

    def resolve(self, path: str, what: str) -> Path:
        """The real path of `path` (symlinks resolved), refused with `unsafe_image_path` when it is absolute
        without permission or lands outside the root. Only path names are inspected: nothing is opened."""
        given = Path(path)
        if given.is_absolute() and not self.allow_absolute:
            raise RowProblem(UNSAFE_IMAGE_PATH, f"{what}: absolute path {path!r} refused (set "
                             "data.allow_absolute_image_paths=true, or allow_absolute_paths=True, to allow it)")
        root = Path(os.path.realpath(self.root))
        resolved = Path(os.path.realpath(given if given.is_absolute() else root / given))
        if not given.is_absolute() and not resolved.is_relative_to(root):
            raise RowProblem(UNSAFE_IMAGE_PATH, f"{what}: path {path!r} resolves to {resolved}, outside the image "
                             f"root {root}; keep images under the root or pass data.image_root")
        return resolved


def image_bytes(item: Any, what: str, root: ImageRoot) -> bytes:
    """Encoded bytes of one image given as bytes, a `{bytes, path}` struct, or a path under `root`."""
    if isinstance(item, (bytes, bytearray)):
        data, path = bytes(item), None
    elif isinstance(item, dict):
        data, path = item.get("bytes"), item.get("path")
    else:
        data, path = None, item
    if data:
        return bytes(data)
    if not isinstance(path, str) or not path:
        raise RowProblem(MISSING_IMAGE, f"{what} has neither bytes nor a path")
    full = root.resolve(path, what)
    if not full.is_file():
        raise RowProblem(MISSING_IMAGE, f"{what}: file {full} not found")
    return full.read_bytes()


def video_frames(item: Any, what: str, root: ImageRoot) -> list[bytes]:
    """Encoded frames of one video given as a list of frame images, a folder of frame images, or a video file
    (decoded with PyAV at `VIDEO_FPS`, at most `MAX_VIDEO_FRAMES` frames, re-encoded as PNG)."""
    if isinstance(item, (list, tuple)):
        return [image_bytes(frame, f"{what} frame {i}", root) for i, frame in enumerate(item)]
    if not isinstance(item, str) or not item:
        raise RowProblem(MISSING_IMAGE, f"{what} is neither a path nor a list of frames: {item!r:.80}")
    full = root.resolve(item, what)
    if full.is_dir():
        frames = sorted(p for p in full.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
        if not frames:
            raise RowProblem(MISSING_IMAGE, f"{what}: folder {full} holds no frame images")
        return [p.read_bytes() for p in frames]
    if not full.is_file():
        raise RowProblem(MISSING_IMAGE, f"{what}: file {full} not found")
    return _decode_video_file(full, what)


def is_image(data: bytes) -> bool:
    """Whether PIL recognises `data` as an image (only the header is read)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except (OSError, ValueError, SyntaxError):  # UnidentifiedImageError is an OSError
        return False


def decode_video(data: bytes, what: str) -> list[bytes]:
    """PNG frames of an encoded video file (mp4, webm, ...), as VST's SFT rows of type video carry them in
    `images` (`prepare_data/sft/convert_json_parquet_video.py`)."""
    return _decode_video_file(io.BytesIO(data), what)


def _decode_video_file(source: Path | io.BytesIO, what: str) -> list[bytes]:
    import av  # imported here: only rows with video files need it

    frames: list[bytes] = []
    next_time = 0.0
    try:
        with av.open(source if isinstance(source, io.BytesIO) else str(source)) as container:
            for frame in container.decode(video=0):
                time = float(frame.time or 0.0)
                if time + 1e-6 < next_time:
                    continue
                buffer = io.BytesIO()
                frame.to_image().save(buffer, format="PNG")
                frames.append(buffer.getvalue())
                next_time = time + 1.0 / VIDEO_FPS
                if len(frames) >= MAX_VIDEO_FRAMES:
                    break
    except (av.error.FFmpegError, ValueError) as error:
        raise RowProblem(UNDECODABLE_IMAGE, f"{what}: not an image and not a decodable video: {error}") from error
    if not frames:
        raise RowProblem(UNDECODABLE_IMAGE, f"{what}: the video has no frames")
    return frames


def check_decodable(images: list[bytes], videos: list[list[bytes]]) -> None:
    """Raise `undecodable_image` for the first image or video frame PIL cannot decode."""
    for i, data in enumerate([*images, *(f for frames in videos for f in frames)]):
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as error:  # PIL raises several unrelated types for corrupt data
            raise RowProblem(UNDECODABLE_IMAGE, f"image {i}: {error}") from error
