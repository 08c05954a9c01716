"""Atomic artifacts: complete under their final name, or absent; a failed write leaves the old one intact."""

from __future__ import annotations

import json

import pytest

from vst_vla.atomic import atomic_directory, is_complete, write_json
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
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(tmp_path / "a"):
        pass


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
