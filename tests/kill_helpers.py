"""Running the real `vst-vla` command as a child process, and killing it with SIGKILL mid-run (resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

VST_VLA = str(Path(sys.executable).parent / "vst-vla")


def vst_vla(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `vst-vla ARGS` to completion; stdout and stderr together in `.stdout`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([VST_VLA, *args], check=False, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def kill_after_progress(args: list[str], cwd: Path, progress: Callable[[], int], rng: np.random.Generator,
                        at_least: int, at_most: int, timeout: float = 600) -> int:
    """Start `vst-vla ARGS`, wait until `progress()` reaches a seeded random count in [at_least, at_most] plus a
    seeded random fraction of a second, then SIGKILL its whole process group (only the processes it started).

    Returns the progress count at the kill; fails if the command finished first.
    """
    target = int(rng.integers(at_least, at_most + 1))
    extra_s = float(rng.uniform(0.0, 0.3))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([VST_VLA, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while progress() < target:
            assert proc.poll() is None, f"vst-vla {args[0]} exited ({proc.returncode}) before progress {target}"
            assert time.monotonic() < deadline, f"vst-vla {args[0]} made no progress to {target}"
            time.sleep(0.02)
        time.sleep(extra_s)
        assert proc.poll() is None, f"vst-vla {args[0]} finished before it could be killed"
        reached = progress()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return reached


def interrupt_on_call(monkeypatch, module, name: str, call: int) -> Callable:
    """Make `module.name` raise KeyboardInterrupt (a Ctrl-C there) on its `call`-th call, running the original on
    every other call; returns the original so a test can put it back with `monkeypatch.setattr`."""
    original = getattr(module, name)
    calls = 0

    def interrupted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return original
