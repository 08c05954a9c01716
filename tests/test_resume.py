"""Trainers resume exactly after kill -9, and one command serves for the first run and the rerun (issue 13).

The kill tests run the real `vst-vla` command as a subprocess, SIGKILL it at a seeded random point (a seeded
delay after `checkpoint-k` starts to appear, so the kill may land mid-save), rerun the very same command and
compare with an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vst_vla.atomic import is_complete, mark_complete
from vst_vla.checkpoints import ResumeError, remove_incomplete_checkpoints, resolve_resume

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _vst_vla(argv: list[str], log: Path) -> subprocess.Popen:
    sink = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "vst_vla.cli", *argv], env=ENV, stdout=sink,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(argv: list[str], log: Path) -> None:
    code = _vst_vla(argv, log).wait(timeout=600)
    assert code == 0, f"vst-vla {argv[0]} exited {code}: {log.read_text()[-3000:]}"


def _kill_after_checkpoint(argv: list[str], checkpoints: Path, steps: list[int], seed: int, log: Path) -> int:
    """Start the command, SIGKILL it a seeded delay after checkpoint-k (k seeded from `steps`) appears; return the
    step of the latest checkpoint marked complete at the kill (on an idle machine the run may have saved more after
    checkpoint-k before the signal landed; a checkpoint without its marker was cut mid-save and does not count)."""
    rng = random.Random(seed)
    k, delay = rng.choice(steps), rng.uniform(0.0, 0.3)
    proc = _vst_vla(argv, log)
    deadline = time.monotonic() + 600
    while not (checkpoints / f"checkpoint-{k}").exists():
        assert proc.poll() is None, f"exited ({proc.returncode}) before checkpoint-{k}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before the kill: make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    complete = [int(p.name.rsplit("-", 1)[1]) for p in checkpoints.glob("checkpoint-*") if is_complete(p)]
    assert complete, f"no checkpoint was complete when the run was killed after checkpoint-{k} appeared"
    return max(complete)


def _resumed_step(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def _assert_same_weights(a_file: Path, b_file: Path) -> None:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name


# --- rl --------------------------------------------------------------------------------------------------


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _word_choice_samples(n: int = 8):
    """Multiple-choice rows whose options ("view", "bottle") are words the random tiny model often samples, so
    some groups' accuracies differ and GRPO has a gradient (DAPO keeps those groups)."""
    from spatial_tuning.sample import SpatialSample

    return [SpatialSample(f"w{i}", [{"from": "human", "value": "<image>Which word? (A) view (B) bottle"},
                                    {"from": "gpt", "value": "AB"[i % 2]}],
                          images=[_png((30 * i, 0, 0))], type="depth_comparison",
                          meta_info={"skill": "depth_comparison", "mode": "multiple_choice", "answer": "AB"[i % 2],
                                     "options": ["view", "bottle"]})
            for i in range(n)]


def _rl_argv(data: Path, out: Path) -> list[str]:
    # 8 prompts, 4 per step: an epoch is 2 steps, so checkpoint-3 is mid-epoch and checkpoint-6 an epoch start.
    return ["rl", "experiment=tiny", "model.device=cpu", f"data.paths=[{data}]", f"output_dir={out}",
            f"hydra.run.dir={out}/hydra", "think=false", "grpo.report_to=[]", "grpo.num_generations=4",
            "grpo.per_device_train_batch_size=16", "grpo.max_completion_length=32", "grpo.temperature=1.5",
            "grpo.learning_rate=1e-4", "grpo.beta=0.0", "grpo.dapo_filter=true", "grpo.max_steps=8",
            "grpo.save_steps=3"]


def _rl_log(out: Path) -> list[dict]:
    # step_time is wall clock, the only logged value that may differ between two identical runs.
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step_time"} for row in rows]


@pytest.mark.slow
def test_rl_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    from spatial_tuning.vst_format import write_parquet

    data = write_parquet(_word_choice_samples(), tmp_path / "train.parquet")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_rl_argv(data, straight), tmp_path / "straight.log")

    k = _kill_after_checkpoint(_rl_argv(data, killed), killed / "trainer", [3, 6], seed=13,
                               log=tmp_path / "killed.log")
    assert not (killed / "checkpoint-final").exists()
    _finish(_rl_argv(data, killed), tmp_path / "rerun.log")  # the same command: resumes by default

    summary = json.loads((killed / "rl_summary.json").read_text())
    assert summary["global_step"] == 8, summary
    # From checkpoint-k, or the one before when the kill landed mid-save (none before the first).
    assert _resumed_step(summary["resumed_from"]) == k, summary["resumed_from"]
    straight_log = _rl_log(straight)
    assert [row["step"] for row in straight_log] == list(range(1, 9))
    # Not vacuous: the policy learns after the resume point (groups with differing accuracy pass DAPO).
    assert any(row["grad_norm"] > 0 for row in straight_log if row["step"] > k)
    assert _rl_log(killed) == straight_log
    _assert_same_weights(straight / "checkpoint-final" / "model.safetensors",
                         killed / "checkpoint-final" / "model.safetensors")



# --- vla -------------------------------------------------------------------------------------------------


def _vla_argv(dataset: Path, out: Path, *extra: str) -> list[str]:
    # Augmentation stays on (the default); the flow head also draws noise and timesteps from torch's RNG.
    return ["vla", "experiment=tiny", "head=flow", "head.flow_steps=2", f"dataset_root={dataset}",
            f"output_dir={out}", f"hydra.run.dir={out}/hydra", "train.max_steps=20", "train.save_steps=2",
            "train.warmup_steps=2", "train.report_to=[]", "trainer.logging_steps=1", *extra]


def _actions(policy_dir: Path) -> torch.Tensor:
    from policies.loading import load_policy

    policy = load_policy(policy_dir)
    generator = torch.Generator().manual_seed(0)
    batch = {"observation.images.front": torch.rand(2, 3, 64, 64, generator=generator),
             "observation.state": torch.randn(2, 4, generator=generator), "task": ["pick up the red block"] * 2}
    torch.manual_seed(0)  # the flow head's sampling noise
    return policy.predict_action_chunk(batch)


@pytest.mark.slow
def test_vla_with_augmentation_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    from policies.synthetic_dataset import make_synthetic_dataset

    dataset = tmp_path / "data"
    make_synthetic_dataset(dataset, episodes=2, frames=8, image_size=64)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_vla_argv(dataset, straight), tmp_path / "straight.log")

    k = _kill_after_checkpoint(_vla_argv(dataset, killed), killed / "checkpoints", [2, 4, 6], seed=7,
                           log=tmp_path / "killed.log")
    assert not (killed / "policy").exists()
    _finish(_vla_argv(dataset, killed), tmp_path / "rerun.log")

    a = json.loads((straight / "train_metrics.json").read_text())
    b = json.loads((killed / "train_metrics.json").read_text())
    assert _resumed_step(b["resumed_from"]) == k and b["steps"] == a["steps"] == 20
    assert b["first_loss"] == a["first_loss"] and b["last_loss"] == a["last_loss"]  # the run's, not the resume's
    _assert_same_weights(straight / "policy" / "model.safetensors", killed / "policy" / "model.safetensors")
    assert (_actions(straight / "policy") - _actions(killed / "policy")).abs().max().item() <= 1e-6

    # A rerun of a finished run continues from its last checkpoint (nothing left to train), never restarts.
    _finish(_vla_argv(dataset, killed), tmp_path / "again.log")
    again = json.loads((killed / "train_metrics.json").read_text())
    assert again["resumed_from"].endswith("checkpoint-20") and again["first_loss"] == a["first_loss"]
    assert again["steps"] == 20  # no extra optimizer step from a checkpoint at the budget
    _assert_same_weights(straight / "policy" / "model.safetensors", killed / "policy" / "model.safetensors")


# --- the resume setting ----------------------------------------------------------------------------------


def _checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    if complete:
        mark_complete(path)
    return path


def test_resume_setting_on_fresh_half_written_and_finished_folders(tmp_path):
    fresh = tmp_path / "fresh"
    assert resolve_resume("auto", fresh) is None and resolve_resume(False, fresh) is None
    with pytest.raises(ResumeError, match="resume=true but .*fresh holds no complete checkpoint-N"):
        resolve_resume(True, fresh)

    run = tmp_path / "run"
    two = _checkpoint(run, 2)
    half = _checkpoint(run, 10, complete=False)  # killed mid-save: never picked, removed before training
    assert resolve_resume("auto", run) == resolve_resume(True, run) == resolve_resume(str(two), run) == str(two)
    with pytest.raises(ResumeError, match="resume=false but .*checkpoint-2 exists and would be overwritten"):
        resolve_resume(False, run)
    with pytest.raises(ResumeError, match="incomplete checkpoint"):
        resolve_resume(str(half), run)
    assert remove_incomplete_checkpoints(run) == [half] and not half.exists() and two.exists()

    finished = tmp_path / "finished"
    (finished / "policy").mkdir(parents=True)  # a final artifact but no checkpoint to continue from
    with pytest.raises(ResumeError, match="policy exists but .* no checkpoint-N to continue from"):
        resolve_resume("auto", finished / "checkpoints", final_artifact=finished / "policy")


@pytest.mark.parametrize("command", ["sft", "rl", "vla"])
def test_must_resume_on_a_fresh_folder_fails_before_loading_anything(command, compose, tmp_path, monkeypatch):
    import policies.train
    import spatial_tuning.grpo
    import spatial_tuning.sft
    import vst_vla.backbone

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the resume setting was checked")

    monkeypatch.setattr(vst_vla.backbone, "load_backbone", no_loading)
    monkeypatch.setattr(spatial_tuning.grpo, "load_backbone", no_loading)
    monkeypatch.setattr(policies.train, "build_policy", no_loading)
    overrides = {"sft": ["resume=true", "data.train=[/nonexistent.parquet]"],
                 "rl": ["resume=true", "data.paths=[/nonexistent.parquet]"],
                 "vla": ["train.resume=true", "dataset_root=/nonexistent"]}[command]
    cfg = compose(command, ["experiment=tiny", f"output_dir={tmp_path / 'fresh'}", *overrides])
    entry = {"sft": spatial_tuning.sft.run, "rl": spatial_tuning.grpo.run, "vla": policies.train.run}[command]
    with pytest.raises(ResumeError, match=r"resume=true but .*fresh.* holds no complete checkpoint-N"):
        entry(cfg)
