"""The `vst-vla` command: help, info, Hydra output folders with the resolved config, one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vst_vla.cli import COMMANDS

VST_VLA = str(Path(sys.executable).parent / "vst-vla")


def _run(args: list[str], cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VST_VLA_DEBUG"} | {"HF_HUB_OFFLINE": "1", **env_vars}
    return subprocess.run([VST_VLA, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


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


# Lines a run may print to stderr besides its error: log records and progress bars (e.g. the tiny backbone's
# "Loading weights" bar when the error comes after the model is loaded).
_LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[[\w.]+\]\[(DEBUG|INFO|WARNING)\]")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if line.strip() and not _LOG_RECORD.match(line) and "it/s]" not in line and "s/it]" not in line]


# Reproductions of issue 13, defect 6: each printed a 7-235 line traceback (exit 1), or exited 0 (`info`).
USER_ERRORS = {
    "missing data file": (["eval-spatial", "data.paths=[/nonexistent/test.parquet]"],
                          "vst-vla eval-spatial: /nonexistent/test.parquet: no such file or directory"),
    "unknown key": (["sft", "optim.learning_rat=1e-4"], "vst-vla sft: optim.learning_rat is not a key of the sft config"),
    "unknown group option": (["vla", "head=transformer"],
                             ("vst-vla vla: head=transformer is not an option of the config group head: choose one of "
                              "flow, l1_chunk, tokens")),
    "missing dataset_root": (["vla"], "vst-vla vla: dataset_root=PATH is required: a LeRobot dataset folder"),
    "nonexistent model": (["info", "model.source=/nonexistent/model"],
                          "vst-vla info: checkpoint directory /nonexistent/model does not exist"),
    "zero episodes": (["collect", "task=pick-place", "episodes=0"],
                      "vst-vla collect: episodes=0: collect records at least one episode per task"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_a_user_error_is_one_line_on_stderr_and_exit_2(case, tmp_path):
    args, message = USER_ERRORS[case]
    proc = _run(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr


def test_vst_vla_debug_adds_the_traceback_before_the_same_line(tmp_path):
    args, message = USER_ERRORS["missing data file"]
    proc = _run(args, tmp_path, VST_VLA_DEBUG="1")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "spatial_tuning/readers.py" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == message
