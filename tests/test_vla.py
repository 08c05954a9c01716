"""`vst-vla vla`: the Hydra configs compose, training runs through `Trainer`, resumes, and the saved policy
loads through `configs/policy/vst_vla.yaml` (the object `vst-vla eval-sim` instantiates)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from policies.synthetic_dataset import make_synthetic_dataset
from policies.train import run
from vst_vla.paths import config_dir


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vla_cmd") / "synthetic"
    make_synthetic_dataset(root, episodes=2, frames=8, image_size=64)
    return root


@pytest.mark.parametrize("head", ["tokens", "l1_chunk", "flow"])
def test_vla_config_composes_for_every_head(head, compose):
    cfg = compose("vla", ["experiment=tiny", f"head={head}", "dataset_root=/data"])
    assert cfg.head.name == head and cfg.head._target_.startswith("policies.heads.")
    assert cfg.model.source == "tiny" and cfg.trainer.device == "cpu"
    assert cfg.image_size <= 96 and cfg.train.max_steps <= 500  # the tiny experiment stays CPU-sized


def test_vla_trains_resumes_and_saves_a_loadable_policy(compose, dataset_root, tmp_path):
    overrides = ["experiment=tiny", "head=flow", f"dataset_root={dataset_root}", f"output_dir={tmp_path}",
                 "train.max_steps=4", "train.save_steps=2", "train.report_to=[]", "trainer.logging_steps=1",
                 "head.flow_steps=2"]
    policy_dir = run(compose("vla", overrides))
    assert (policy_dir / "_COMPLETE").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "checkpoints" / "checkpoint-4" / "_COMPLETE").is_file()
    (tmp_path / "checkpoints" / "checkpoint-5").mkdir()  # a save killed half-way: no marker, never resumed from

    # The same command with a larger budget continues (resume=auto by default) and cleans the half-written save.
    run(compose("vla", [*overrides[:-5], "train.max_steps=6", "train.save_steps=2", "train.report_to=[]",
                        "trainer.logging_steps=1", "head.flow_steps=2"]))
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["head"] == "flow"
    assert metrics["resumed_from"].endswith("checkpoint-4") and not (tmp_path / "checkpoints" / "checkpoint-5").exists()
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]

    policy_cfg = OmegaConf.load(config_dir() / "policy" / "vst_vla.yaml")
    policy_cfg.path = str(policy_dir)
    policy = instantiate(policy_cfg)
    policy.reset()
    batch = {"observation.images.front": torch.rand(2, 3, 64, 64), "observation.state": torch.randn(2, 4),
             "task": ["pick up the red block"] * 2}
    action = policy.select_action(batch)
    assert action.shape == (2, 4) and torch.isfinite(action).all()


def test_image_augmentation_crops_and_jitters_to_the_policy_size():
    from policies.data import make_image_augmentation

    torch.manual_seed(0)
    image = torch.rand(3, 96, 96)
    augmented = make_image_augmentation(84)(image)
    assert augmented.shape == (3, 84, 84) and 0.0 <= augmented.min() and augmented.max() <= 1.0
    assert not torch.allclose(augmented, torch.nn.functional.interpolate(image[None], size=84)[0], atol=1e-3)


def test_batch_augmentation_is_a_function_of_its_position_in_the_run():
    from policies.data import SeededImageAugmentation, make_image_augmentation

    augment = SeededImageAugmentation(make_image_augmentation(56), ["observation.images.front"], seed=0)
    batch = {"observation.images.front": torch.rand(3, 3, 64, 64), "observation.state": torch.zeros(3, 4)}
    torch.manual_seed(1)
    expected_draw = torch.rand(1)
    torch.manual_seed(1)
    first = augment(batch, step=5, micro_batch=1)["observation.images.front"]
    assert torch.equal(torch.rand(1), expected_draw)  # torch's global RNG (dropout, flow noise) is untouched
    assert first.shape == (3, 3, 56, 56) and not torch.allclose(first[0], first[1], atol=1e-3)
    assert torch.equal(augment(batch, step=5, micro_batch=1)["observation.images.front"], first)
    assert not torch.allclose(augment(batch, step=6, micro_batch=1)["observation.images.front"], first, atol=1e-3)
    assert not torch.allclose(augment(batch, step=5, micro_batch=0)["observation.images.front"], first, atol=1e-3)
    assert torch.equal(augment(batch, step=5)["observation.state"], batch["observation.state"])


def test_lora_and_frozen_vision_train_only_what_they_should(compose, dataset_root, tmp_path):
    from policies.train import build_policy

    cfg = compose("vla", ["experiment=tiny", "head=l1_chunk", f"dataset_root={dataset_root}", "finetune=lora"])
    loaded, _ = build_policy(cfg, dataset_root)
    trainable = {n for n, p in loaded.policy.named_parameters() if p.requires_grad}
    backbone = {n for n in trainable if n.startswith("vlm.model.")}
    assert backbone and all("lora_" in n for n in backbone)
    assert any(n.startswith("head.") for n in trainable) and "vlm.state_proj.weight" in trainable
    cfg = compose("vla", ["experiment=tiny", f"dataset_root={dataset_root}", "finetune=full"])
    loaded, _ = build_policy(cfg, dataset_root)
    trainable = {n for n, p in loaded.policy.named_parameters() if p.requires_grad}
    assert not any(".visual." in n for n in trainable)
    assert any(".language_model." in n for n in trainable)
