"""Action heads: each learns on a tiny dataset; the tokens head's binning and vocabulary; cached decoding."""

from __future__ import annotations

import copy

import pytest
import torch

from policies.configuration_vst_vla import VSTVLAConfig
from policies.data import dataset_stats, open_dataset, set_features
from policies.heads.tokens import ACTION_TOKEN, discretize, undiscretize
from policies.loading import new_policy
from policies.synthetic_dataset import make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads") / "synthetic"
    make_synthetic_dataset(root, episodes=2, frames=8, image_size=56)
    return root


def build(head: str, root, tiny_backbone):
    config = VSTVLAConfig(head=head, chunk_size=4, n_action_steps=2, head_hidden_dim=64, flow_steps=4, device="cpu")
    dataset = open_dataset(root, set_features(config, open_dataset(root).meta.features))
    return new_policy(config, dataset_stats(dataset), backbone=copy.deepcopy(tiny_backbone)), dataset


@pytest.mark.parametrize("head", ["tokens", "l1_chunk", "flow"])
def test_head_loss_falls_over_a_few_steps(head, dataset_root, tiny_backbone):
    loaded, dataset = build(head, dataset_root, tiny_backbone)
    batch = loaded.preprocessor(next(iter(torch.utils.data.DataLoader(dataset, batch_size=4))))
    policy = loaded.policy.train()
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=3e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(0)  # the same flow-matching noise and times each step: the loss moves only by learning
        loss, _ = policy(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_binning_round_trip_is_within_half_a_bin():
    values = torch.linspace(-1, 1, 10_001)
    for n_bins in (256, 7):
        bins = discretize(values, n_bins)
        assert bins.min() == 0 and bins.max() == n_bins - 1
        error = (undiscretize(bins, n_bins) - values).abs().max()
        assert error <= 1.0 / n_bins + 1e-6  # half of the bin width 2/n_bins
    assert discretize(torch.tensor([-5.0, 5.0]), 256).tolist() == [0, 255]  # outside q01/q99: clipped


def test_action_tokens_are_new_vocabulary_with_embeddings(dataset_root, tiny_backbone):
    base_vocab = len(tiny_backbone[1].tokenizer)
    loaded, _ = build("tokens", dataset_root, tiny_backbone)
    tokenizer, model = loaded.policy.vlm.processor.tokenizer, loaded.policy.vlm.model
    ids = tokenizer.convert_tokens_to_ids([ACTION_TOKEN.format(i) for i in range(256)])
    assert ids == list(range(ids[0], ids[0] + 256)) and ids[0] >= base_vocab
    assert model.get_input_embeddings().weight.shape[0] >= ids[-1] + 1
    assert model.lm_head.weight.shape[0] >= ids[-1] + 1
    assert tokenizer.decode([ids[7]]) == ACTION_TOKEN.format(7)


def test_cached_token_decoding_matches_full_forward_passes(dataset_root, tiny_backbone):
    loaded, dataset = build("tokens", dataset_root, tiny_backbone)
    policy, head = loaded.policy.eval(), loaded.policy.head
    batch = loaded.preprocessor(next(iter(torch.utils.data.DataLoader(dataset, batch_size=3))))
    batch["task"] = ["open", "put the red block into the green bowl next to the cup", "push it"]  # left padding
    inputs, state = policy.prepare_inputs(batch)
    cached = discretize(head.predict(policy.vlm, inputs, state)[:, 0], head.n_bins)
    # Reference: greedy decoding by re-running the whole prompt plus the tokens so far, without a cache.
    bins = torch.empty(3, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(policy.action_dim):
            hidden = policy.vlm(inputs.extended(bins + head.first_token_id), state).last_hidden_state[:, -1]
            bins = torch.cat([bins, head._action_logits(policy.vlm, hidden).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, bins)


def test_flow_conditioning_cache_follows_weight_updates(dataset_root, tiny_backbone):
    loaded, dataset = build("flow", dataset_root, tiny_backbone)
    policy, head = loaded.policy.eval(), loaded.policy.head
    batch = loaded.preprocessor(next(iter(torch.utils.data.DataLoader(dataset, batch_size=2))))
    inputs, state = policy.prepare_inputs(batch)
    noise = torch.randn(2, head.chunk_size, head.action_dim)
    before = head.predict(policy.vlm, inputs, state, noise=noise)
    with torch.no_grad():
        head.time_mlp[0].weight.add_(0.5)  # what an optimizer step does: an in-place update
    cached = head.predict(policy.vlm, inputs, state, noise=noise)
    head._conditioning_key = None
    fresh = head.predict(policy.vlm, inputs, state, noise=noise)
    assert not torch.equal(before, cached) and torch.equal(cached, fresh)
