"""Atomic artifacts: complete under their final name, or absent; a failed write leaves the old one intact; only
folders vst-vla created are ever replaced; partials have fixed names and resume; modes follow the umask."""

from __future__ import annotations

import json
import os
import stat

import pytest

from vst_vla.atomic import (
    OutputDirError,
    atomic_directory,
    current_umask,
    is_complete,
    partial_path,
    read_manifest,
    write_json,
)
from vst_vla.errors import UserError
from vst_vla.runtime import select_mujoco_renderer


def test_atomic_directory_appears_complete(tmp_path):
    final = tmp_path / "artifact"
    with atomic_directory(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"1234")
        assert not final.exists()
    assert is_complete(final) and (final / "weights.bin").read_bytes() == b"1234"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_failed_write_leaves_previous_artifact(tmp_path):
    final = tmp_path / "artifact"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(final, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("killed")
    assert (final / "v").read_text() == "1" and is_complete(final)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_complete_artifact_is_not_overwritten_by_accident(tmp_path):
    with atomic_directory(tmp_path / "a") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError, match="already holds a complete artifact; pass overwrite=true"), \
            atomic_directory(tmp_path / "a"):
        pass


def _foreign_folder(tmp_path):
    """The issue's reproduction: `mkdir -p x/sub; echo keep > x/sub/f`."""
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("keep\n")
    return folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_we_did_not_create_is_never_replaced(tmp_path, overwrite):
    folder = _foreign_folder(tmp_path)
    with pytest.raises(OutputDirError) as err, atomic_directory(folder, overwrite=overwrite, kind="dataset"):
        pytest.fail("the body must not run")
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert f"{folder} already exists and holds files vst-vla did not write (sub/)" in message
    assert "overwrite=true only replaces a folder vst-vla created" in message
    assert (folder / "sub" / "f").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no partial left behind either


def test_an_empty_folder_is_used_and_overwrite_replaces_only_our_own_kind(tmp_path):
    final = tmp_path / "empty"
    final.mkdir()
    with atomic_directory(final, kind="dataset", request={"episodes": 2}) as tmp:
        (tmp / "v").write_text("1")
    manifest = read_manifest(final)
    assert manifest["artifact"] == "dataset" and manifest["request"] == {"episodes": 2} and len(manifest["id"]) == 32
    with pytest.raises(OutputDirError, match="holds a vst-vla dataset, not a bundle"), \
            atomic_directory(final, overwrite=True, kind="bundle"):
        pass
    with atomic_directory(final, overwrite=True, kind="dataset") as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_stale_partial_is_cleared_or_resumed_by_the_next_run(tmp_path):
    final = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt), atomic_directory(final, kind="dataset", request={"n": 3}, resume=True) as tmp:
        assert tmp == partial_path(final) == tmp_path / ".data.partial"  # fixed: the next run finds it
        (tmp / "episode-0").write_text("done")
        raise KeyboardInterrupt  # killed mid-run: the finished part stays for a rerun
    assert not final.exists() and (partial_path(final) / "episode-0").is_file()
    with pytest.raises(RuntimeError), atomic_directory(final, kind="dataset", request={"n": 3}, resume=True) as tmp:
        assert (tmp / "episode-0").read_text() == "done"  # same request: resumed
        raise RuntimeError("fails again")
    with atomic_directory(final, kind="dataset", request={"n": 4}, resume=True) as tmp:
        assert not (tmp / "episode-0").exists()  # another request: the stale partial is cleared
        (tmp / "episode-0").write_text("new")
    assert (final / "episode-0").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    with pytest.raises(KeyboardInterrupt), atomic_directory(final, overwrite=True, kind="dataset", resume=True) as tmp:
        (tmp / "old").write_text("stale")
        raise KeyboardInterrupt
    with atomic_directory(final, overwrite=True, kind="dataset") as tmp:  # not resumable: always cleared
        assert [p.name for p in tmp.iterdir()] == ["_PARTIAL"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_partial_without_our_marker_is_refused_and_a_running_one_is_locked(tmp_path):
    final = tmp_path / "data"
    partial_path(final).mkdir()
    (partial_path(final) / "mine").write_text("not vst-vla's")
    with pytest.raises(OutputDirError, match=r"\.data\.partial exists and was not written by vst-vla"), \
            atomic_directory(final):
        pass
    assert (partial_path(final) / "mine").is_file()
    other = tmp_path / "other"
    with atomic_directory(other, resume=True) as tmp:
        with pytest.raises(OutputDirError, match=f"another vst-vla run is writing {other}"), \
                atomic_directory(other, resume=True):
            pass
        (tmp / "v").write_text("1")
    assert (other / "v").read_text() == "1"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_and_folders_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        with atomic_directory(tmp_path / "artifact") as tmp:
            write_json(tmp / "sub" / "m.json", {"a": 1})
        write_json(tmp_path / "file.json", {"a": 1})
    finally:
        os.umask(previous)
    expect_file, expect_dir = {0o022: (0o644, 0o755), 0o077: (0o600, 0o700)}[umask]
    paths = [tmp_path / "file.json", *(tmp_path / "artifact").rglob("*"), tmp_path / "artifact"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {"file.json": expect_file, "m.json": expect_file, "_COMPLETE": expect_file,
                     "sub": expect_dir, "artifact": expect_dir}


def test_write_json_replaces_atomically(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    write_json(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_renderer_error_names_the_missing_package(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("VST_VLA_RENDERER_CHECKED", raising=False)
    with pytest.raises(RuntimeError, match="No MuJoCo offscreen renderer works") as err:
        select_mujoco_renderer(("osmesa-missing",))
    assert "osmesa-missing" in str(err.value)


def test_renderer_prefers_egl_here(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("VST_VLA_RENDERER_CHECKED", raising=False)
    assert select_mujoco_renderer() in {"egl", "osmesa"}
