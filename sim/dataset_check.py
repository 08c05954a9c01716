"""Checks that a LeRobot dataset is complete and matches the env a policy trained on it will run in.

Each failure is a `DatasetMismatchError` naming the root, file or key that is missing or different, raised
before LeRobot would try (and, offline, fail) to download what is missing from the Hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sim.env_spec import EnvSpec
from vst_vla.atomic import is_complete, partial_path

# What `vst-vla collect` leaves behind when killed: a sibling `.NAME.partial` (a rerun resumes it).
_PARTIAL_SUFFIX = ".partial"
_STAT_KEYS_ANY = ("mean", "std", "min", "max", "q01", "q99")


class DatasetMismatchError(ValueError):
    """A dataset is missing, incomplete, or does not match the env."""


def check_dataset_root(root: str | Path) -> Path:
    """The root of a complete local LeRobot dataset (v3 layout), or an error naming what is missing."""
    root = Path(root)
    if not root.exists():
        partial = partial_path(root)
        hint = (f" (only the unfinished {partial.name} of an interrupted collect is there: rerun that collect "
                "to finish it)") if partial.exists() else ""
        raise DatasetMismatchError(f"dataset root {root} does not exist{hint}; record one with "
                                   f"`vst-vla collect output_dir={root}`")
    if root.name.endswith(_PARTIAL_SUFFIX) and not is_complete(root):
        raise DatasetMismatchError(f"{root} is the unfinished output of a killed collect run, not a dataset")
    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet"):
        if not (root / rel).is_file():
            what = "statistics" if rel.endswith("stats.json") else "metadata"
            raise DatasetMismatchError(f"dataset {root} is missing {rel} ({what}); it is incomplete or not a "
                                       "LeRobot v3 dataset")
    if not (root / "data").is_dir():
        raise DatasetMismatchError(f"dataset {root} has no data/ folder (no recorded frames)")
    return root


def load_dataset_meta(root: str | Path, repo_id: str | None = None):
    """`LeRobotDatasetMetadata` of a checked local dataset (offline; never downloads)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    root = check_dataset_root(root)
    return LeRobotDatasetMetadata(repo_id or f"local/{root.name}", root=root)


def _features_and_stats(dataset_meta: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None, str]:
    if isinstance(dataset_meta, Mapping):
        return dataset_meta["features"], dataset_meta.get("stats"), str(dataset_meta.get("root", "dataset"))
    return dataset_meta.features, dataset_meta.stats, str(getattr(dataset_meta, "root", "dataset"))


def _policy_keys(features: Mapping[str, Any]) -> list[str]:
    return [k for k in features if k == "action" or k.startswith("observation.")]


def check_dataset_matches_env(dataset_meta: Any, env_spec: EnvSpec) -> None:
    """Raise `DatasetMismatchError` naming each dataset key the env does not produce in the same shape,
    a missing action, a dataset without any of the env's cameras, or a key without statistics.

    `dataset_meta` is a `LeRobotDatasetMetadata` or a mapping with `features` (and `stats`). The env may
    produce more than the dataset holds (extra cameras, privileged state): a policy ignores what it did
    not train on.
    """
    features, stats, where = _features_and_stats(dataset_meta)
    problems = []
    if "action" not in features:
        problems.append("the dataset has no 'action' feature")
    for key in _policy_keys(features):
        if key not in env_spec.features:
            problems.append(f"dataset key {key!r} is not produced by the env (env keys: "
                            f"{', '.join(env_spec.features)})")
            continue
        got, want = tuple(features[key]["shape"]), tuple(env_spec.features[key]["shape"])
        if got != want:
            problems.append(f"{key!r} has shape {got} in the dataset but {want} in the env")
    env_images = env_spec.image_keys
    if env_images and not any(k in features for k in env_images):
        problems.append(f"the dataset has none of the env's cameras ({', '.join(env_images)})")
    if stats is None:
        problems.append("the dataset has no statistics (meta/stats.json)")
    else:
        for key in _policy_keys(features):
            if key in env_spec.features and not any(s in stats.get(key, {}) for s in _STAT_KEYS_ANY):
                problems.append(f"the dataset has no statistics for {key!r}")
    if problems:
        raise DatasetMismatchError(f"dataset {where} does not match the env:\n  - " + "\n  - ".join(problems))
