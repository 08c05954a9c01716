"""`vst-vla collect`: expert demos load back as a LeRobot dataset with action chunks and padding flags; a
killed run leaves nothing that looks complete and a rerun resumes it exactly; a folder we did not create is
never written; mismatched or incomplete datasets fail with named keys."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest
from kill_helpers import interrupt_on_call, kill_after_progress, vst_vla
from omegaconf import OmegaConf

from sim import collect as collect_module
from sim.collect import collect_dataset
from sim.dataset_check import DatasetMismatchError, check_dataset_matches_env, load_dataset_meta
from sim.env_spec import env_spec
from sim.tasks import instruction
from vst_vla.atomic import OutputDirError, current_umask

ENV = {"name": "metaworld", "task": "reach", "cameras": ["corner2"], "image_size": 32, "max_episode_steps": 80}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect") / "reach"
    summary = collect_dataset(OmegaConf.create(ENV), root, episodes=2, n_envs=2)
    assert summary.kept == 2 and summary.dropped == 0 and summary.frames > 0
    return root


def test_dataset_loads_back_with_action_chunks_and_padding(dataset_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    chunk = 8
    dataset = LeRobotDataset("local/metaworld", root=dataset_root,
                             delta_timestamps={"action": [i / 80 for i in range(chunk)]})
    assert dataset.meta.total_episodes == 2
    first = dataset[0]
    assert first["action"].shape == (chunk, 4) and not first["action_is_pad"].any()
    assert first["observation.images.corner2"].shape == (3, 32, 32)
    assert first["task"] == instruction("reach")
    last_of_first_episode = dataset.meta.episodes["dataset_to_index"][0] - 1
    last = dataset[last_of_first_episode]
    assert last["episode_index"] == 0 and last["action_is_pad"].tolist() == [False] + [True] * (chunk - 1)
    for key in ("observation.state", "action", "observation.images.corner2"):
        assert "mean" in dataset.meta.stats[key]


def test_dataset_matches_its_env_and_mismatches_are_named(dataset_root):
    meta = load_dataset_meta(dataset_root)
    check_dataset_matches_env(meta, env_spec(OmegaConf.create(ENV)))
    with pytest.raises(DatasetMismatchError, match=r"'observation.images.corner2' has shape \(32, 32, 3\)"):
        check_dataset_matches_env(meta, env_spec(OmegaConf.create({**ENV, "image_size": 64})))
    with pytest.raises(DatasetMismatchError, match=r"'observation.images.corner2' is not produced by the env"):
        check_dataset_matches_env(meta, env_spec(OmegaConf.create({**ENV, "cameras": ["topview"]})))
    no_stats = {"features": meta.features, "stats": None, "root": "x"}
    with pytest.raises(DatasetMismatchError, match="no statistics"):
        check_dataset_matches_env(no_stats, env_spec(OmegaConf.create(ENV)))


def test_missing_root_and_missing_stats_are_named(dataset_root, tmp_path):
    with pytest.raises(DatasetMismatchError, match=r"dataset root .*nowhere does not exist"):
        load_dataset_meta(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(dataset_root, copy)
    (copy / "meta" / "stats.json").unlink()
    with pytest.raises(DatasetMismatchError, match=r"missing meta/stats.json \(statistics\)"):
        load_dataset_meta(copy)


def _content(root):
    """Everything a dataset holds, read back: frames (image bytes included), episodes, info, stats, tasks.
    (LeRobot's parquet and stats.json bytes vary with dict ordering between processes, not their content.)"""
    import pyarrow.parquet as pq

    tables = {p.relative_to(root).as_posix(): pq.read_table(p).to_pydict() for p in sorted(root.rglob("*.parquet"))}
    return {"tables": tables, "info": json.loads((root / "meta" / "info.json").read_text()),
            "stats": json.loads((root / "meta" / "stats.json").read_text())}


def test_interrupted_collection_resumes_with_its_finished_episodes(dataset_root, tmp_path, monkeypatch):
    journal = interrupt_on_call(monkeypatch, collect_module, "_journal_episode", call=2)
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        collect_dataset(OmegaConf.create(ENV), root, episodes=2, n_envs=2)
    assert not root.exists()  # nothing that looks like a dataset...
    assert [p.name for p in tmp_path.iterdir()] == [".ds.partial"]  # ...only the journal, under a fixed name
    with pytest.raises(DatasetMismatchError, match=r"does not exist \(only the unfinished \.ds\.partial"):
        load_dataset_meta(root)
    monkeypatch.setattr(collect_module, "_journal_episode", journal)

    def killed_while_building(*args):
        raise KeyboardInterrupt  # every episode is journaled; the dataset is half built

    monkeypatch.setattr(collect_module, "_remove_empty_dirs", killed_while_building)
    with pytest.raises(KeyboardInterrupt):
        collect_dataset(OmegaConf.create(ENV), root, episodes=2, n_envs=1)  # another batching, same data
    assert (tmp_path / ".ds.partial" / "dataset" / "meta").is_dir() and not root.exists()
    monkeypatch.undo()
    summary = collect_dataset(OmegaConf.create(ENV), root, episodes=2, n_envs=1)
    assert summary.resumed_episodes == 2 and summary.kept == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert _content(root) == _content(dataset_root)  # the fixture: the same request, uninterrupted


def test_dataset_files_follow_the_umask(dataset_root):
    mask = current_umask()
    for path in [dataset_root, *dataset_root.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_complete_dataset_is_reused_and_other_settings_are_refused(dataset_root):
    before = sorted((p, p.stat().st_mtime_ns) for p in dataset_root.rglob("*"))
    summary = collect_dataset(OmegaConf.create(ENV), dataset_root, episodes=2, n_envs=2)
    assert summary.reused and summary.kept == 2
    with pytest.raises(OutputDirError, match=r"holds a lerobot-dataset made with other settings \(episodes differ\); "
                                             "pass overwrite=true"):
        collect_dataset(OmegaConf.create(ENV), dataset_root, episodes=3, n_envs=2)
    assert sorted((p, p.stat().st_mtime_ns) for p in dataset_root.rglob("*")) == before


def test_collect_into_a_foreign_folder_is_refused_and_loses_nothing(tmp_path):
    """The issue's reproduction: `mkdir -p /tmp/x/sub; echo keep >/tmp/x/sub/f; vst-vla collect ... output_dir=/tmp/x`
    deleted /tmp/x/sub; `overwrite=true` must not delete it either."""
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("keep\n")
    for extra in ([], ["overwrite=true"]):
        proc = vst_vla(["collect", "task=reach", "episodes=1", "n_envs=1", "vector=sync", "env.image_size=32",
                        f"output_dir={folder}", f"hydra.run.dir={tmp_path / 'run'}", *extra], cwd=tmp_path)
        assert proc.returncode != 0
        assert f"{folder} already exists and holds files vst-vla did not write (sub/)" in proc.stdout
        assert "overwrite=true only replaces a folder vst-vla created" in proc.stdout
        assert (folder / "sub" / "f").read_text() == "keep\n" and sorted(p.name for p in folder.iterdir()) == ["sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "x"]


@pytest.mark.slow
def test_collect_killed_at_a_random_point_then_rerun_equals_an_uninterrupted_run(tmp_path):
    out = tmp_path / "ds"
    args = ["collect", "task=reach", "episodes=4", "n_envs=1", "vector=sync", "env.image_size=32",
            "env.max_episode_steps=80", "noise_std=0.1", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    journal = tmp_path / ".ds.partial" / "episodes" / "reach-v3"

    def finished() -> int:
        return len(list(journal.glob("*.npz"))) if journal.is_dir() else 0

    killed_at = kill_after_progress(args, tmp_path, finished, np.random.default_rng(13), at_least=1, at_most=2)
    assert not out.exists() and finished() == killed_at >= 1
    proc = vst_vla(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"{killed_at} kept from an interrupted run" in proc.stdout
    reference = tmp_path / "uninterrupted"
    collect_dataset(OmegaConf.create({**ENV, "max_episode_steps": 80}), reference, episodes=4, n_envs=2,
                    noise_std=0.1)
    assert _content(out) == _content(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "run", "uninterrupted"]
