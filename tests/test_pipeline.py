"""The pipeline resumes after SIGKILL with the same artifacts as an uninterrupted run, and reports what it has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vst_vla.pipeline import DONE_MARKER, STAGE_NAMES

# A pipeline of the first two stages at toy size: enough SFT steps that a kill lands between checkpoints.
SMALL = [
    "stages=[synth,sft]", "report=true",
    ("stage_overrides.synth=['counts_per_skill.train=3','counts_per_skill.test=1','image_size=56',"
    "'skills=[depth_comparison,absolute_depth,counting,camera_motion]']"),
    "stage_overrides.sft=['optim.max_steps=8','save_steps=2','max_tokens_per_pack=512','report_to=[]']",
]


def _pipeline(root: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vst_vla.cli", "pipeline", "experiment=tiny",
                             f"output_dir={root}", f"hydra.run.dir={root}/logs/pipeline", *SMALL],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"pipeline exited ({proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.2)


def _weights(root: Path) -> dict:
    return load_file(str(root / "sft" / "checkpoint-final" / "model.safetensors"))


@pytest.mark.slow
def test_killed_during_sft_resumes_to_the_uninterrupted_result(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _pipeline(straight).wait(timeout=600) == 0

    proc = _pipeline(killed)
    _wait_for(killed / "sft" / "checkpoint-4" / "trainer_state.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its SFT child, mid-training
    proc.wait()
    assert not (killed / "sft" / DONE_MARKER).exists() and not (killed / "sft" / "checkpoint-final").exists()
    assert (killed / "synth" / DONE_MARKER).exists()

    assert _pipeline(killed).wait(timeout=600) == 0
    summary = json.loads((killed / "pipeline.json").read_text())
    assert summary["stages"]["synth"].get("skipped") is True and not summary["stages"]["sft"].get("skipped")
    metrics = json.loads((killed / "sft" / "sft_metrics.json").read_text())
    assert metrics["resumed_from"] and "checkpoint-" in metrics["resumed_from"]

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name
    # Generated data is byte-identical too (deterministic by seed).
    for split in ("vst_p/train.parquet", "vst_r/test.parquet"):
        assert (straight / "synth" / split).read_bytes() == (killed / "synth" / split).read_bytes()

    report = (killed / "report.md").read_text()
    assert "Held-out loss" in report and "Simulation evaluation: not run." in report
    assert (killed / "report.html").read_text().startswith("<!doctype html>")


def test_unknown_stage_is_a_clear_error(compose):
    from vst_vla.pipeline import selected_stages

    cfg = compose("pipeline", ["stages=[synth,nope]"])
    with pytest.raises(ValueError, match="unknown stage.*nope"):
        selected_stages(cfg)


def test_every_stage_command_exists():
    from vst_vla.cli import COMMANDS
    from vst_vla.pipeline import STAGES

    assert len(STAGE_NAMES) == len(set(STAGE_NAMES))
    for stage in STAGES:
        assert stage.command in COMMANDS, stage
