"""Trainer checkpoints: which one a run resumes from, and marking them complete.

transformers' `Trainer` writes `checkpoint-N/` in place (weights, optimizer, scheduler, RNG states, then
`trainer_state.json`), so a run killed mid-save leaves a folder that looks like a checkpoint. Every trainer here
adds `MarkCheckpointComplete`, which writes the `_COMPLETE` marker (atomically) once the Trainer has finished a
checkpoint, and resumes only from marked ones; unmarked ones are the remains of a kill and are removed.

The `resume` key of `sft`, `rl` and `vla` (`train.resume`) takes:
  auto  - the latest complete `checkpoint-N` when there is one, else a fresh start (the default: the same
          command serves for the first run and for the rerun after a kill);
  true  - the latest complete `checkpoint-N`; an error when there is none;
  false - a fresh start; an error when the folder already holds a complete checkpoint or the final artifact;
  PATH  - that checkpoint directory (it must be complete).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback, TrainerState

from vst_vla.atomic import is_complete, mark_complete

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(ValueError):
    """A `resume` setting that cannot be honoured for this output folder (a user error)."""


def step_checkpoints(directory: str | Path) -> list[Path]:
    """Every `checkpoint-N` folder under `directory` (complete or not), by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))


def latest_complete_checkpoint(directory: str | Path) -> Path | None:
    """The complete `checkpoint-N` with the largest N under `directory`, or None."""
    complete = [p for p in step_checkpoints(directory) if is_complete(p)]
    return complete[-1] if complete else None


def resume_mode(value: object) -> str | Path:
    """`auto`, `true`, `false`, or a checkpoint path, from the config value (Hydra parses true/false)."""
    if value is None or value is False or str(value).lower() == "false":
        return "false"
    if value is True or str(value).lower() == "true":
        return "true"
    if str(value).lower() == "auto":
        return "auto"
    return Path(str(value))


def resolve_resume(value: object, checkpoint_dir: str | Path, final_artifact: str | Path | None = None,
                   key: str = "resume") -> str | None:
    """The checkpoint to resume from (or None for a fresh start) for the `resume` setting `value`.

    Cheap (reads folder names and markers only), so commands call it before loading any model. Raises
    `ResumeError` with one line saying what to do when the setting cannot be honoured.
    """
    mode, checkpoint_dir = resume_mode(value), Path(checkpoint_dir)
    if isinstance(mode, Path):
        if not (mode / "trainer_state.json").is_file():
            raise ResumeError(f"{key}={mode}: not a Trainer checkpoint (no trainer_state.json there)")
        if not is_complete(mode):
            raise ResumeError(f"{key}={mode}: incomplete checkpoint (no _COMPLETE marker: its save was "
                              f"interrupted); pass an earlier checkpoint or {key}=auto")
        return str(mode)
    latest = latest_complete_checkpoint(checkpoint_dir)
    if mode == "true":
        if latest is None:
            raise ResumeError(f"{key}=true but {checkpoint_dir} holds no complete checkpoint-N to resume from; "
                              f"drop {key}=true (the default {key}=auto starts fresh there) or pass {key}=PATH")
        return str(latest)
    final_exists = final_artifact is not None and Path(final_artifact).exists()
    if mode == "false" and (latest is not None or final_exists):
        found = latest if latest is not None else final_artifact
        raise ResumeError(f"{key}=false but {found} exists and would be overwritten; pass a new output_dir, "
                          f"delete that folder, or {key}=auto to continue the run")
    if mode == "auto" and latest is None and final_exists:
        raise ResumeError(f"{final_artifact} exists but {checkpoint_dir} holds no checkpoint-N to continue from; "
                          "pass a new output_dir or delete that folder to train again")
    return str(latest) if mode == "auto" and latest is not None else None


def remove_incomplete_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Delete the `checkpoint-N` folders a kill left half-written (no marker); returns what was removed.

    Only the main process removes (the others see the same folders through a shared file system)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    removed = [p for p in step_checkpoints(checkpoint_dir) if not is_complete(p)]
    for path in removed:
        log.warning("removing %s: its save was interrupted (no _COMPLETE marker)", path)
        shutil.rmtree(path, ignore_errors=True)
    return removed


class MarkCheckpointComplete(TrainerCallback):
    """Marks `checkpoint-N` complete right after the Trainer has written all of it (on the saving process)."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def train_or_restore(trainer, resume: str | bool | None, max_steps: int | None = None):
    """`trainer.train(resume_from_checkpoint=resume)`, except from a checkpoint already at the step budget (a run
    killed after its last checkpoint, or a rerun of a finished run): Trainer would still take one more optimizer
    step there, so only the checkpoint's weights and state are read. The budget is `max_steps`, or with None or
    <= 0 (an epoch budget) the `max_steps` the Trainer recorded in the checkpoint.

    Returns the Trainer's `TrainOutput`, or None when the checkpoint was only read (no training callback ran)."""
    state_file = Path(str(resume)) / "trainer_state.json" if isinstance(resume, str) else None
    if state_file is not None and state_file.is_file():
        state = TrainerState.load_from_json(str(state_file))
        budget = int(max_steps) if max_steps is not None and int(max_steps) > 0 else int(state.max_steps)
        if budget > 0 and state.global_step >= budget:
            log.info("%s is at the step budget (%d): reading it, nothing left to train", resume, budget)
            trainer._load_from_checkpoint(str(resume))
            trainer.state = state
            return None
    if resume:
        log.info("resuming from %s", resume)
    return trainer.train(resume_from_checkpoint=resume)
