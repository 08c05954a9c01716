"""LeRobot's video decoder, torchcodec, without its 100-line load failure on machines that lack FFmpeg.

LeRobot probes torchcodec whenever a dataset is opened without an explicit video backend and logs the whole
traceback of the failed import each time (twice per `vst-vla vla` or `lerobot-train` run). Image datasets never
decode with torchcodec, so the warning is dropped for them; for video datasets it becomes one line, once.
Imports nothing heavy: `policies/__init__.py` installs it before `lerobot-train` parses its arguments.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

_TORCHCODEC_LOAD_FAILURE = "'torchcodec' is installed but cannot be loaded"
_TORCHCODEC_ONE_LINE = ("torchcodec cannot be loaded here (it needs FFmpeg 4-8 shared libraries); LeRobot decodes "
                        "this dataset's videos with pyav instead")


class _TorchcodecLoadFailureFilter(logging.Filter):
    """Turns LeRobot's warning about torchcodec (a 100-line traceback, repeated per dataset) into one line, once,
    and drops it when the datasets in use hold no video (image datasets never decode with torchcodec)."""

    def __init__(self) -> None:
        super().__init__()
        self.video_in_use: bool | None = None  # None: not known (one line is printed)
        self.reported = False

    def filter(self, record: logging.LogRecord) -> bool:
        if _TORCHCODEC_LOAD_FAILURE not in str(record.msg):
            return True
        if self.video_in_use is False or self.reported:
            return False
        self.reported = True
        record.msg, record.args, record.exc_info = _TORCHCODEC_ONE_LINE, (), None
        return True


_torchcodec_filter = _TorchcodecLoadFailureFilter()


def quiet_torchcodec(video_in_use: bool | None = None) -> None:
    """Install the torchcodec warning filter on LeRobot's logger (idempotent); `video_in_use` (when known)
    says whether the datasets read by this process hold videos."""
    logger = logging.getLogger("lerobot.utils.import_utils")  # where get_safe_default_video_backend warns
    if _torchcodec_filter not in logger.filters:
        logger.addFilter(_torchcodec_filter)
    if video_in_use is not None:
        _torchcodec_filter.video_in_use = video_in_use


def dataset_has_video(root: str | os.PathLike | None) -> bool | None:
    """Whether the LeRobot dataset at `root` stores any feature as video (None when there is no readable
    `meta/info.json` there)."""
    if root is None:
        return None
    try:
        features = json.loads((Path(root) / "meta" / "info.json").read_text()).get("features", {})
    except (OSError, ValueError):
        return None
    return any(isinstance(f, dict) and f.get("dtype") == "video" for f in features.values())


def quiet_torchcodec_for_lerobot_cli(argv: list[str] | None = None) -> None:
    """Install the filter for a LeRobot command (`lerobot-train`, `lerobot-eval`) that imported our policy
    package; its `--dataset.root=DIR` argument, when given, says whether videos are in use."""
    args = sys.argv[1:] if argv is None else argv
    root = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--dataset.root=")), None)
    quiet_torchcodec(video_in_use=dataset_has_video(root))
