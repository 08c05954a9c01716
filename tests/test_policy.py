"""The vst_vla policy: save/load round trip, action queueing, loud normalisation errors, raw-batch loading."""

from __future__ import annotations

import copy

import pytest
import torch

from policies.configuration_vst_vla import VSTVLAConfig
from policies.data import dataset_stats, open_dataset, set_features
from policies.loading import load_policy, new_policy, save_policy
from policies.processor_vst_vla import NormalizationError, make_vst_vla_pre_post_processors
from policies.synthetic_dataset import make_synthetic_dataset

HEADS = ["tokens", "l1_chunk", "flow"]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vla") / "synthetic"
    make_synthetic_dataset(root, episodes=2, frames=10, image_size=64, cameras=("front", "wrist"))
    return root


def build(head: str, root, tiny_backbone, **overrides) -> tuple:
    config = VSTVLAConfig(head=head, chunk_size=4, n_action_steps=3, head_hidden_dim=64, flow_steps=3,
                          device="cpu", **overrides)
    dataset = open_dataset(root, set_features(config, open_dataset(root).meta.features))
    loaded = new_policy(config, dataset_stats(dataset), backbone=copy.deepcopy(tiny_backbone))
    return loaded, dataset


def raw_batch(dataset, n: int = 2) -> dict:
    items = [dataset[i] for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k.startswith("observation.")}
    batch["task"] = [it["task"] for it in items]
    return batch


def train_steps(loaded, dataset, steps: int = 2) -> None:
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)
    optimizer = torch.optim.AdamW(loaded.policy.get_optim_params(), lr=1e-3)
    loaded.policy.train()
    for _, batch in zip(range(steps), loader, strict=False):
        loss, _ = loaded.policy(loaded.preprocessor(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    loaded.policy.eval()


@pytest.mark.parametrize("head", HEADS)
def test_save_then_load_gives_identical_actions(head, dataset_root, tiny_backbone, tmp_path):
    loaded, dataset = build(head, dataset_root, tiny_backbone)
    train_steps(loaded, dataset)
    batch = raw_batch(dataset)
    torch.manual_seed(0)
    before = loaded.predict_action_chunk(batch)
    out = save_policy(loaded.policy, loaded.preprocessor, loaded.postprocessor, tmp_path / "policy")
    assert (out / "_COMPLETE").is_file() and (out / "backbone" / "tokenizer.json").is_file()
    reloaded = load_policy(out)
    torch.manual_seed(0)
    after = reloaded.predict_action_chunk(batch)
    assert before.shape == (2, loaded.config.chunk_size, 4)
    assert torch.equal(before, after)


def test_select_action_pops_n_action_steps_from_one_chunk(dataset_root, tiny_backbone):
    loaded, dataset = build("l1_chunk", dataset_root, tiny_backbone)
    policy, batch = loaded.policy, loaded.preprocessor(raw_batch(dataset))
    calls = []
    original = policy.predict_action_chunk

    def counting(b, **kwargs):
        chunk = original(b, **kwargs)
        calls.append(chunk)
        return chunk

    policy.predict_action_chunk = counting
    policy.reset()
    actions = [policy.select_action(batch) for _ in range(policy.config.n_action_steps)]
    assert len(calls) == 1
    for i, action in enumerate(actions):
        assert torch.equal(action, calls[0][:, i])
    policy.select_action(batch)
    assert len(calls) == 2
    policy.reset()
    policy.select_action(batch)
    assert len(calls) == 3


def test_loaded_policy_returns_environment_units(dataset_root, tiny_backbone):
    loaded, dataset = build("l1_chunk", dataset_root, tiny_backbone)
    batch = raw_batch(dataset)
    normalised = loaded.policy.predict_action_chunk(loaded.preprocessor(batch))
    stats = loaded.postprocessor.steps[0]._tensor_stats["action"]
    expected = (normalised + 1) * (stats["q99"] - stats["q01"]) / 2 + stats["q01"]
    torch.testing.assert_close(loaded.predict_action_chunk(batch), expected)
    loaded.reset()
    assert loaded.select_action(batch).shape == (2, 4)


def test_mismatched_normalisation_keys_raise(dataset_root, tiny_backbone):
    loaded, dataset = build("l1_chunk", dataset_root, tiny_backbone)
    config, stats = loaded.config, dataset_stats(dataset)
    missing = {k: v for k, v in stats.items() if k != "observation.state"}
    with pytest.raises(NormalizationError, match="observation.state"):
        make_vst_vla_pre_post_processors(config, missing)
    wrong_shape = {**stats, "action": {**stats["action"], "q99": stats["action"]["q99"][:2]}}
    with pytest.raises(NormalizationError, match="action.q99"):
        make_vst_vla_pre_post_processors(config, wrong_shape)
    batch = raw_batch(dataset)
    with pytest.raises(NormalizationError, match="observation.images.wrist"):
        loaded.select_action({k: v for k, v in batch.items() if k != "observation.images.wrist"})
    with pytest.raises(NormalizationError, match="observation.images.top"):
        loaded.select_action({**batch, "observation.images.top": batch["observation.images.front"]})
    with pytest.raises(NormalizationError, match="observation.state"):
        loaded.select_action({**batch, "observation.state": batch["observation.state"][:, :3]})


def test_numpy_observations_are_accepted_and_state_can_be_left_out(dataset_root, tiny_backbone):
    loaded, dataset = build("l1_chunk", dataset_root, tiny_backbone, use_state=False)
    assert loaded.policy.vlm.state_proj is None
    batch = raw_batch(dataset)
    as_numpy = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    torch.testing.assert_close(loaded.predict_action_chunk(as_numpy), loaded.predict_action_chunk(batch))
    prompt = loaded.policy.vlm.processor.tokenizer.decode(loaded.policy.prepare_inputs(
        loaded.preprocessor(batch))[0].input_ids[0])
    assert "What action should the robot take to pick up the red block?" in prompt and "<|proprio|>" not in prompt


def test_privileged_and_known_unused_keys_are_accepted_and_dropped(dataset_root, tiny_backbone):
    loaded, dataset = build("l1_chunk", dataset_root, tiny_backbone)
    batch = raw_batch(dataset)
    with_privileged = {**batch, "observation.environment_state": torch.randn(2, 39)}
    assert "observation.environment_state" not in loaded.preprocessor(with_privileged)
    torch.testing.assert_close(loaded.predict_action_chunk(with_privileged), loaded.predict_action_chunk(batch))
