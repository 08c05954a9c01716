"""The `vst-vla` command: help, info, Hydra output folders with the resolved config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vst_vla.cli import COMMANDS

VST_VLA = str(Path(sys.executable).parent / "vst-vla")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([VST_VLA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand(tmp_path):
    proc = _run(["--help"], tmp_path)
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in proc.stdout


def test_unknown_command_fails_with_usage(tmp_path):
    proc = _run(["nope"], tmp_path)
    assert proc.returncode == 2 and "unknown command 'nope'" in proc.stderr


def test_info_prints_versions_and_renderer_and_saves_resolved_config(tmp_path):
    proc = _run(["info", "model.device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for key in ("torch", "transformers", "trl", "lerobot", "mujoco", "device", "attention", "mujoco renderer"):
        assert any(line.startswith(key) for line in proc.stdout.splitlines()), key
    assert "mujoco renderer    egl" in proc.stdout or "mujoco renderer    osmesa" in proc.stdout
    runs = list((tmp_path / "outputs" / "info").glob("*/*/.hydra/config.yaml"))
    assert len(runs) == 1 and "device: cpu" in runs[0].read_text()


def test_demo_answers_a_question_about_a_rendered_image(tmp_path):
    from vst_vla.cli import run_command

    answer = run_command("demo", [f"hydra.run.dir={tmp_path}", "image_size=64", "max_new_tokens=4"])
    assert isinstance(answer, str)
    assert (tmp_path / "scene.png").is_file() and (tmp_path / "backbone" / "config.json").is_file()
