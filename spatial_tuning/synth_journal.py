"""The journal that makes `vst-vla synth` resumable: one file per finished scene, replayed on a rerun.

Scenes of a split are assembled strictly in order, and the only state carried from one scene to the next is
the samples accepted so far, the split's rng (answer-letter placement, option order) and the letter counts.
After each scene, `scenes/<split>/<index>.json` (written atomically) records the samples that scene added and
that state; a rerun replays the files in order and carries on from the next scene, so its output is
byte-identical to an uninterrupted run's. Samples are stored as JSON (images base64-encoded), never pickled.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from spatial_tuning.sample import SpatialSample
from vst_vla.atomic import write_text


def _encode(sample: SpatialSample, blobs: dict[bytes, int]) -> dict[str, Any]:
    """A sample as JSON, every field kept; its images as indices into the scene's `blobs` (a scene's samples
    share its renders)."""
    def index(data: bytes) -> int:
        return blobs.setdefault(data, len(blobs))

    row = {f.name: getattr(sample, f.name) for f in fields(SpatialSample)}
    row["images"] = [index(b) for b in sample.images]
    row["videos"] = [[index(b) for b in frames] for frames in sample.videos]
    return row


def _decode(row: dict[str, Any], blobs: list[bytes]) -> SpatialSample:
    images = [blobs[i] for i in row["images"]]
    videos = [[blobs[i] for i in frames] for frames in row["videos"]]
    return SpatialSample(**{**row, "images": images, "videos": videos})


class SceneJournal:
    """The finished scenes of one split, in `folder` (None: an unjournaled run)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _path(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{index:05d}.json"

    def record(self, index: int, added: list[SpatialSample], rng: np.random.Generator,
               letter_counts: dict[str, Counter]) -> None:
        """Scene `index` is finished: it added `added`; `rng` and `letter_counts` are the state after it."""
        if self.folder is None:
            return
        blobs: dict[bytes, int] = {}
        samples = [_encode(s, blobs) for s in added]
        state = {"index": index, "samples": samples, "blobs": [base64.b64encode(b).decode("ascii") for b in blobs],
                 "rng": rng.bit_generator.state,
                 "letters": {skill: {str(k): v for k, v in counts.items()} for skill, counts in letter_counts.items()}}
        write_text(self._path(index), json.dumps(state))

    def replay(self, accepted: dict[str, list[SpatialSample]], rng: np.random.Generator,
               letter_counts: dict[str, Counter]) -> int:
        """Restore the state after the last finished scene into the arguments; the index of the next scene."""
        index, last = 0, None
        while self.folder is not None and self._path(index).is_file():
            last = json.loads(self._path(index).read_text())
            blobs = [base64.b64decode(b) for b in last["blobs"]]
            for row in last["samples"]:
                sample = _decode(row, blobs)
                accepted[sample.skill].append(sample)
            index += 1
        if last is not None:
            rng.bit_generator.state = last["rng"]
            letter_counts.clear()
            letter_counts.update({skill: Counter({int(k): v for k, v in counts.items()})
                                  for skill, counts in last["letters"].items()})
        return index
