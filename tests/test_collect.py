"""`vst-vla collect`: expert demos load back as a LeRobot dataset with action chunks and padding flags; a
killed run leaves nothing that looks complete; mismatched or incomplete datasets fail with named keys."""

from __future__ import annotations

import shutil

import pytest
from omegaconf import OmegaConf

from sim import collect as collect_module
from sim.collect import collect_dataset
from sim.dataset_check import DatasetMismatchError, check_dataset_matches_env, load_dataset_meta
from sim.env_spec import env_spec
from sim.tasks import instruction

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


def test_killed_collection_leaves_no_dataset(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run were interrupted while writing the first episode

    monkeypatch.setattr(collect_module, "_write_episode", killed)
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        collect_dataset(OmegaConf.create(ENV), root, episodes=1)
    assert not root.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetMismatchError, match="does not exist"):
        load_dataset_meta(root)
