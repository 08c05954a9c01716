"""MetaWorld v3 task names, instruction texts and task sets.

Instructions come from LeRobot's MetaWorld table (`lerobot/envs/metaworld_config.json`), so datasets recorded
here carry the same `task` strings as LeRobot's MetaWorld suite. Two tasks share a sentence there
(push-v3 and push-back-v3); ours are made unique, because a language-conditioned policy (and the scripted
expert, which finds its task from the instruction) must be able to tell them apart.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

# Tasks the test suite steps through; any of the 50 works by name.
TESTED_TASKS = ("pick-place-v3", "push-v3", "reach-v3", "door-open-v3", "drawer-close-v3")
_INSTRUCTION_OVERRIDES = {"push-back-v3": "Push the puck back to a goal behind it"}


@functools.cache
def _lerobot_metaworld_table() -> dict:
    # Read the JSON from the installed package without importing lerobot.envs (which pulls in the world).
    spec = importlib.util.find_spec("lerobot")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lerobot is not installed; it provides the MetaWorld instruction table")
    path = Path(next(iter(spec.submodule_search_locations))) / "envs" / "metaworld_config.json"
    return json.loads(path.read_text())


@functools.cache
def all_tasks() -> tuple[str, ...]:
    """The names of MetaWorld's v3 tasks (e.g. `pick-place-v3`)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(sorted(ALL_V3_ENVIRONMENTS))


def task_sets() -> dict[str, tuple[str, ...]]:
    """Named multi-task sets: MetaWorld's MT10/MT50, LeRobot's difficulty groups and our tested five."""
    from metaworld.env_dict import MT10_V3

    sets = {"mt10": tuple(MT10_V3), "mt50": all_tasks(), "tested": TESTED_TASKS}
    sets.update({k: tuple(v) for k, v in _lerobot_metaworld_table()["DIFFICULTY_TO_TASKS"].items()})
    return sets


def canonical_task(name: str) -> str:
    """`pick-place`, `pick-place-v3` or `metaworld-pick-place-v3` -> `pick-place-v3`; unknown names fail loudly."""
    task = name.strip().removeprefix("metaworld-")
    if not task.endswith("-v3"):
        task = f"{task}-v3"
    if task not in all_tasks():
        raise ValueError(f"unknown MetaWorld task {name!r}; known tasks: {', '.join(all_tasks())}; "
                         f"sets: {', '.join(task_sets())}")
    return task


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """A task, a set name (`mt10`, `easy`, ...) or a comma-separated / list mix of both -> task names."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    sets = task_sets()
    tasks: list[str] = []
    for item in (i.strip() for i in items if i.strip()):
        for task in sets.get(item, (item,)):
            task = canonical_task(task)
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise ValueError(f"env.task={spec!r} names no task")
    return tasks


def instruction(task: str) -> str:
    """The natural-language instruction of a task (the LeRobot `task` string of every frame)."""
    task = canonical_task(task)
    return _INSTRUCTION_OVERRIDES.get(task) or _lerobot_metaworld_table()["TASK_DESCRIPTIONS"][task]


@functools.cache
def task_for_instruction() -> dict[str, str]:
    """Instruction text -> task name (instructions are unique by construction, checked here)."""
    table = {instruction(t): t for t in all_tasks()}
    if len(table) != len(all_tasks()):
        raise AssertionError("MetaWorld instructions are not unique; extend _INSTRUCTION_OVERRIDES")
    return table
