"""Validating readers for spatial data in every published shape, yielding `SpatialSample`s.

Shapes (details and the VST sources they follow in `spatial_tuning.vst_rows`):
- VST SFT parquet (`conversations, id, data_source, images, type, meta_info`), also our `vst-vla synth` output;
- VST RL parquet (`id, images, question, answer, meta_info`), recognised by its columns;
- LLaVA JSON / JSONL (`conversations` with `image`/`images`/`video`/`videos` paths under an image root).

A bad row raises `BadSampleError` naming the file, the row id and the reason; with `on_bad_sample="skip"` it is
skipped and counted per reason in a `SampleReport`. Rows VST repairs silently (a leading non-human turn, empty
turns, images without placeholders) are repaired the same way and counted too, so nothing changes unseen.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from spatial_tuning.ground_truth_check import check_ground_truth
from spatial_tuning.image_paths import ImageRoot, check_decodable
from spatial_tuning.row_problems import (  # noqa: F401  (re-exported: the reasons are part of this API)
    ANSWER_NOT_BOXES,
    ANSWER_NOT_CHOICE,
    ANSWER_NOT_NUMBER,
    BAD_META_INFO,
    EMPTY_ANSWER,
    EMPTY_CONVERSATION,
    IMAGE_COUNT_MISMATCH,
    MISSING_IMAGE,
    NON_ALTERNATING_CONVERSATION,
    NON_STRING_VALUE,
    REASONS,
    REPAIRS,
    UNDECODABLE_IMAGE,
    UNKNOWN_REWARD_MODE,
    UNSAFE_IMAGE_PATH,
    VIDEO_COUNT_MISMATCH,
    RowProblem,
)
from spatial_tuning.sample import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, SpatialSample
from spatial_tuning.vst_rows import is_rl_row, llava_row_sample, rl_row_sample, sft_row_sample

log = logging.getLogger(__name__)

_JSON_SUFFIXES = {".json", ".jsonl"}
_BATCH_ROWS = 256


class BadSampleError(ValueError):
    """A row that cannot become a valid `SpatialSample`; names the file, the row id and the reason."""

    def __init__(self, file: str | Path, row_id: str, reason: str, detail: str) -> None:
        self.file, self.row_id, self.reason, self.detail = str(file), row_id, reason, detail
        super().__init__(f"{file}: row id {row_id!r}: {reason}: {detail}")


@dataclass
class SampleReport:
    """What a load kept, repaired and skipped: rows counted per reason / repair, with the first few of each."""

    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)  # rows per repair kind (a row may have several)
    repaired_rows: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, error: BadSampleError) -> None:
        self.skipped[error.reason] += 1
        self._example(error.reason, str(error))

    def add_repairs(self, file: Path, row_id: str, repairs: set[str]) -> None:
        if not repairs:
            return
        self.repaired_rows += 1
        for kind in sorted(repairs):
            self.repaired[kind] += 1
            self._example(kind, f"{file}: row id {row_id!r}")

    def _example(self, key: str, text: str) -> None:
        kept = self.examples.setdefault(key, [])
        if len(kept) < 3:
            kept.append(text)

    def summary(self) -> str:
        """One line per reason and repair kind, for the log at the end of a load."""
        head = (f"loaded {self.loaded} samples from {len(self.files)} file(s), repaired {self.repaired_rows}, "
                f"skipped {self.total_skipped}")
        counts = [*sorted(self.skipped.items()), *sorted(self.repaired.items())]
        return "\n".join([head] + [f"  {key}: {n} (e.g. {self.examples[key][0]})" for key, n in counts])

    def to_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "skipped": dict(self.skipped), "repaired": dict(self.repaired),
                "repaired_rows": self.repaired_rows, "examples": self.examples, "files": self.files}


def load_samples(paths: str | Path | list, on_bad_sample: str = "error", image_root: str | Path | None = None,
                 decode_images: bool = True, allow_absolute_paths: bool = False) -> list[SpatialSample]:
    """Read samples from parquet files (VST SFT or RL shape), directories of them, or LLaVA-style JSON / JSONL.
    Image paths resolve under `image_root` (default: the data file's folder) and may not leave it; absolute
    paths only with `allow_absolute_paths`. `on_bad_sample` is "error" (raise `BadSampleError`) or "skip"."""
    samples, _ = load_samples_with_report(paths, on_bad_sample, image_root, decode_images, allow_absolute_paths)
    return samples


def reader_options(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`load_samples` keyword arguments from a stage's `data` config (`on_bad_sample`, `image_root`,
    `allow_absolute_image_paths`)."""
    return {"on_bad_sample": str(data_cfg.get("on_bad_sample", "error")),
            "image_root": data_cfg.get("image_root") or None,
            "allow_absolute_paths": bool(data_cfg.get("allow_absolute_image_paths", False))}


def load_samples_with_report(paths: str | Path | list, on_bad_sample: str = "error",
                             image_root: str | Path | None = None, decode_images: bool = True,
                             allow_absolute_paths: bool = False) -> tuple[list[SpatialSample], SampleReport]:
    """Like `load_samples`, also returning the `SampleReport` of kept, repaired and skipped rows."""
    if on_bad_sample not in {"error", "skip"}:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; expected 'error' or 'skip'")
    report = SampleReport()
    samples: list[SpatialSample] = []
    for file in resolve_files(paths):
        report.files.append(str(file))
        root = ImageRoot(Path(image_root) if image_root else file.parent, allow_absolute_paths)
        for row_id, build in _row_builders(file, root):
            try:
                sample, repairs = _checked(build, row_id, file, decode_images)
            except BadSampleError as error:
                if on_bad_sample == "error":
                    raise
                report.add_skip(error)
                continue
            report.add_repairs(file, row_id, repairs)
            samples.append(sample)
    report.loaded = len(samples)
    if report.total_skipped or report.repaired_rows:
        log.warning("spatial data: %s", report.summary())
    else:
        log.info("spatial data: loaded %d samples from %d file(s)", report.loaded, len(report.files))
    return samples, report


def _checked(build, row_id: str, file: Path, decode_images: bool) -> tuple[SpatialSample, set[str]]:
    try:
        sample, repairs = build()
        check_ground_truth(sample.meta_info)
    except RowProblem as problem:
        raise BadSampleError(file, row_id, problem.reason, problem.detail) from problem
    validate_sample(sample, file, decode_images)
    return sample, repairs


def resolve_files(paths: str | Path | list) -> list[Path]:
    """Data files named by `paths`: parquet/JSON files as given, directories searched for `*.parquet`
    (recursively), else for top-level `*.json` / `*.jsonl`."""
    items = paths if isinstance(paths, (list, tuple)) else [paths]
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("*.parquet")) or sorted(p for p in path.iterdir() if p.suffix in _JSON_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: directory holds no *.parquet, *.json or *.jsonl files")
            files += found
        elif path.is_file():
            if path.suffix != ".parquet" and path.suffix not in _JSON_SUFFIXES:
                raise ValueError(f"{path}: unsupported data file (expected .parquet, .json or .jsonl)")
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def _row_builders(file: Path, root: ImageRoot) -> Iterator[tuple[str, Any]]:
    """Yield (row id, thunk building `(sample, repairs)`) for every row of `file`; thunks raise `RowProblem`."""
    yield from (_parquet_rows if file.suffix == ".parquet" else _json_rows)(file, root)


def _parquet_rows(file: Path, root: ImageRoot):
    parquet = pq.ParquetFile(file)
    columns = set(parquet.schema_arrow.names)
    rl = is_rl_row(columns)
    if not rl and "conversations" not in columns:
        raise ValueError(f"{file}: neither a VST SFT parquet file (no 'conversations' column) nor a VST RL one "
                         f"(no 'question' and 'answer' columns); columns: {sorted(columns)}")
    index = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            row_id = str(row.get("id") if row.get("id") is not None else f"#{index}")
            if rl:
                yield row_id, (lambda row=row, row_id=row_id: rl_row_sample(row, row_id, root, file.stem))
            else:
                yield row_id, (lambda row=row, row_id=row_id: sft_row_sample(row, row_id, root))
            index += 1


def _json_rows(file: Path, root: ImageRoot):
    try:
        text = file.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" \
            else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON: {error}") from error
    if not isinstance(rows, list):
        raise TypeError(f"{file}: expected a JSON list of samples, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        row_id = str(row.get("id", f"#{index}")) if isinstance(row, dict) else f"#{index}"
        if isinstance(row, dict) and is_rl_row(row):
            yield row_id, (lambda row=row, row_id=row_id: rl_row_sample(row, row_id, root, file.stem))
        else:
            yield row_id, (lambda row=row, row_id=row_id: llava_row_sample(row, row_id, root))


def validate_sample(sample: SpatialSample, file: str | Path = "<memory>", decode_images: bool = True) -> None:
    """Raise `BadSampleError` unless `sample` opens with a human turn, has only human/gpt turns, ends in a gpt
    answer, has one image per `<image>` (one video per `<video>`), and decodable images. Consecutive turns of
    one role are allowed: VST's loader passes them on as separate messages."""
    def bad(reason: str, detail: str) -> BadSampleError:
        return BadSampleError(file, sample.id, reason, detail)

    turns = sample.conversations
    if not turns:
        raise bad(EMPTY_CONVERSATION, "no turns")
    roles = [t["from"] for t in turns]
    if roles[0] != "human" or any(r not in ("human", "gpt") for r in roles):
        raise bad(NON_ALTERNATING_CONVERSATION, f"turns are from {roles}; expected human first, then human/gpt")
    if roles[-1] != "gpt":
        raise bad(NON_ALTERNATING_CONVERSATION, "the last turn is not a gpt answer")
    text = "".join(t["value"] for t in turns)
    if text.count(IMAGE_PLACEHOLDER) != len(sample.images):
        raise bad(IMAGE_COUNT_MISMATCH, f"{text.count(IMAGE_PLACEHOLDER)} image placeholders (<|image_pad|> or "
                  f"<image>) but {len(sample.images)} images")
    if text.count(VIDEO_PLACEHOLDER) != len(sample.videos):
        raise bad(VIDEO_COUNT_MISMATCH, f"{text.count(VIDEO_PLACEHOLDER)} video placeholders (<|video_pad|> or "
                  f"<video>) but {len(sample.videos)} videos")
    if decode_images:
        try:
            check_decodable(sample.images, sample.videos)
        except RowProblem as problem:
            raise bad(problem.reason, problem.detail) from problem
