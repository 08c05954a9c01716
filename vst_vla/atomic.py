"""Atomic writes into folders we own: an artifact appears complete under its final name, or not at all.

Every stage writes its artifact through these, so a run killed mid-write never leaves something a rerun
would take for complete, and a folder vst-vla did not create is never replaced or deleted.

An artifact directory is built in a partial sibling with a fixed name, `.NAME.partial`, holding a
`_PARTIAL` marker (the artifact kind and the request that made it). Being fixed, the next run finds it:
resumable stages (`resume=True`) continue from what it holds when the request is the same, everything else
clears it. On success the artifact gets its `_COMPLETE` manifest (kind, creation time, a unique id, the
request) and is renamed to NAME. A folder is ours when it holds one of these markers; an existing NAME that
is neither empty nor ours is refused, even with `overwrite=true`.

Files and folders get the modes the user's umask allows (0644/0755 under umask 022), like any other file
the user creates: `mkstemp` alone, and safetensors' writer, make them 0600, unreadable to a separate
serving account; a complete artifact's whole tree is set to the umask's modes before it is renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vst_vla.errors import UserError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "_COMPLETE"
PARTIAL_MARKER = "_PARTIAL"
_UMASK_LOCK = threading.Lock()


class OutputDirError(UserError, FileExistsError):
    """An output folder we may not write: not ours, already complete, or being written by another run."""


def current_umask() -> int:
    """The process umask, read without changing it (Linux `/proc`); elsewhere set and restored under a lock."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open()` would give a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a plain `mkdir()` would give a new folder: 0777 less the umask."""
    return 0o777 & ~current_umask()


def reset_modes(root: str | Path) -> None:
    """Give every folder and file under `root` the umask's modes (after copies that carried 0600/0700 along)."""
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, dir_mode() if path.is_dir() else file_mode())


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (a temporary sibling, fsynced, renamed over it), mode per umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600 whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def partial_path(final: str | Path) -> Path:
    """Where the artifact `final` is built before it is complete (fixed, so a rerun finds it)."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def _normalised(request: Any) -> Any:
    return json.loads(json.dumps(request, sort_keys=True, default=str))


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The `_COMPLETE` manifest of an artifact directory; None when it has none. Old `ok` markers read as {}."""
    marker = Path(directory) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    with contextlib.suppress(ValueError):
        manifest = json.loads(marker.read_text())
        if isinstance(manifest, dict):
            return manifest
    return {}


def is_complete(directory: str | Path) -> bool:
    """Whether `directory` was finished by `atomic_directory` (or `mark_complete`)."""
    return (Path(directory) / COMPLETE_MARKER).is_file()


def mark_complete(directory: str | Path, kind: str = "checkpoint", request: Any = None) -> None:
    """Mark a directory written in place (e.g. a Trainer checkpoint) as a complete artifact of `kind`."""
    reset_modes(directory)  # safetensors writes 0600 files whatever the umask
    write_json(Path(directory) / COMPLETE_MARKER, _manifest(kind, request))


def _manifest(kind: str, request: Any) -> dict[str, Any]:
    return {"artifact": kind, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "id": uuid.uuid4().hex, "request": _normalised(request)}


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_dir(final: str | Path, kind: str, overwrite: bool = False) -> bool:
    """Whether `final` may receive a `kind` artifact; True when it already holds a complete one.

    Absent, an empty folder, or a complete `kind` artifact with `overwrite` are fine. Anything else (a file,
    a folder holding what vst-vla did not write, another kind of artifact, a complete one without
    `overwrite`) raises `OutputDirError` naming the path and what to do.
    """
    final = Path(final)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise OutputDirError(f"{final} exists and is not a folder; choose another output_dir")
    if not final.exists() or not any(final.iterdir()):
        return False
    manifest = read_manifest(final)
    if manifest is None:
        raise OutputDirError(
            f"{final} already exists and holds files vst-vla did not write ({_listing(final)}); refusing to "
            f"write a {kind} there (overwrite=true only replaces a folder vst-vla created): choose an empty "
            "or new output_dir, or move those files away")
    other = manifest.get("artifact")
    if other and other != kind and kind != "artifact":
        raise OutputDirError(f"{final} holds a vst-vla {other}, not a {kind}; choose another output_dir")
    if not overwrite:
        raise OutputDirError(f"{final} already holds a complete {kind}; pass overwrite=true to replace it, "
                             "or choose another output_dir")
    return True


def reusable(final: str | Path, kind: str, request: Any) -> bool:
    """Whether `final` holds a complete `kind` made by the same `request` (a rerun may reuse it).

    False when absent or empty; `OutputDirError` when it holds anything else, naming the differing keys.
    """
    final = Path(final)
    check_output_dir(final, kind, overwrite=True)
    manifest = read_manifest(final)
    if manifest is None:
        return False
    saved = manifest.get("request")
    if saved is None or saved == _normalised(request):
        return True
    differing = sorted(k for k in set(saved) | set(_normalised(request))
                       if saved.get(k) != _normalised(request).get(k))
    raise OutputDirError(f"{final} holds a {kind} made with other settings ({', '.join(differing)} differ); "
                         "pass overwrite=true to replace it, or choose another output_dir")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _clear(folder: Path, keep: str) -> None:
    for child in folder.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def _locked_partial(final: Path, kind: str, request: Any, resume: bool) -> Iterator[Path]:
    """The partial of `final`, locked against a concurrent run; cleared unless it resumes the same request."""
    partial = partial_path(final)
    partial.mkdir(parents=True, exist_ok=True)
    marker = partial / PARTIAL_MARKER
    ours = marker.exists() or (partial / COMPLETE_MARKER).exists()  # the latter: killed while renaming
    if not ours and any(partial.iterdir()):
        raise OutputDirError(f"{partial} exists and was not written by vst-vla (no {PARTIAL_MARKER} marker); "
                             "move it away and rerun")
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(f"another vst-vla run is writing {final} (its {partial.name} is locked); wait "
                                 "for it to finish or stop it") from None
        state = {"artifact": kind, "request": _normalised(request)}
        if resume and _read_json(marker) == state:
            log.info("resuming the unfinished %s in %s", kind, partial)
            yield partial
            return
        if any(p.name != PARTIAL_MARKER for p in partial.iterdir()):
            log.info("removing the stale unfinished %s in %s", kind, partial)
            _clear(partial, keep=PARTIAL_MARKER)
        # Written through the locked descriptor: replacing the file would drop the lock with its inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(state) + "\n").encode(), 0)
        os.fsync(fd)
        yield partial
    finally:
        os.close(fd)


@contextlib.contextmanager
def resumable_partial(final: str | Path, kind: str, request: Any) -> Iterator[Path]:
    """The locked partial folder of `final` for work that is journaled rather than renamed into place (e.g.
    evaluation episodes): kept as it is for the same `request`, cleared otherwise; the caller removes it
    once its result is written."""
    with _locked_partial(Path(final), kind, request, resume=True) as partial:
        yield partial


def _replace(partial: Path, final: Path) -> None:
    trash = final.with_name(f".{final.name}.replaced")
    if trash.exists():  # left by a run killed while swapping; ours only if it holds our manifest
        if read_manifest(trash) is None:
            raise OutputDirError(f"{trash} exists and was not written by vst-vla; move it away and rerun")
        shutil.rmtree(trash)
    if final.exists() and any(final.iterdir()):
        os.replace(final, trash)
        os.replace(partial, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, final)  # rename(2) replaces an empty directory
    with contextlib.suppress(OSError):
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False, kind: str = "artifact", request: Any = None,
                     resume: bool = False) -> Iterator[Path]:
    """Yield the partial directory of `final`; on success it gets its manifest and is renamed to `final`.

    `final` must be absent, empty, or (with `overwrite`) a complete artifact of `kind` (see
    `check_output_dir`). With `resume`, a partial left by an interrupted run of the same `request` is
    yielded as it is, and kept when this run fails too; otherwise it is cleared first and removed on failure.
    """
    final = Path(final)
    check_output_dir(final, kind, overwrite)
    with _locked_partial(final, kind, request, resume) as partial:
        try:
            yield partial
            check_output_dir(final, kind, overwrite)  # again: the folder may have changed during a long run
            write_json(partial / COMPLETE_MARKER, _manifest(kind, request))
            (partial / PARTIAL_MARKER).unlink()
            reset_modes(partial)  # libraries write 0600 files too (safetensors, mkstemp users)
            _replace(partial, final)
        except BaseException:
            if resume and partial.exists():
                log.info("kept the unfinished %s in %s: rerun the same command to resume", kind, partial)
            elif partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
            raise
