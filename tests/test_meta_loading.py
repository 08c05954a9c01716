"""Loading a saved policy without initialising its weights first (`policies.meta_loading`): the backbone and head are
built with parameters on the meta device, then the safetensors are assigned. Same actions and weights as the
old path (a randomly initialised architecture with the file copied in), nothing left on meta, tied embeddings
still tied, the rotary tables (non-persistent buffers, in no checkpoint) computed, not garbage."""

from __future__ import annotations

import pytest
import torch
from policy_fixtures import saved_tiny_policy
from safetensors.torch import load_file, load_model, save_file

from policies.configuration_vst_vla import VSTVLAConfig
from policies.loading import load_policy
from policies.meta_loading import WeightsFileError
from policies.modeling_vst_vla import VSTVLAPolicy, build_backbone_architecture

CAM, STATE = "observation.images.front", "observation.state"


def _saved_policy(tiny_backbone, root, head: str, finetune: str):
    return saved_tiny_policy(tiny_backbone, root / f"{head}_{finetune}", head, finetune, perturb=True)


def _old_path(path) -> VSTVLAPolicy:
    """The loading this replaces: a randomly initialised architecture, then the file copied in (strict)."""
    config = VSTVLAConfig.from_pretrained(path)
    policy = VSTVLAPolicy(config, backbone=build_backbone_architecture(path / "backbone", config))
    load_model(policy, path / "model.safetensors", strict=True)
    return policy.eval()


@pytest.mark.parametrize(("head", "finetune"), [("l1_chunk", "full"), ("tokens", "lora"), ("flow", "frozen")])
def test_meta_loading_equals_the_old_path(head, finetune, tiny_backbone, tmp_path):
    path = _saved_policy(tiny_backbone, tmp_path, head, finetune)
    new, old = load_policy(path), _old_path(path)
    assert not [n for n, t in [*new.policy.named_parameters(), *new.policy.named_buffers()] if t.is_meta]
    model = new.policy.vlm.model
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tie_word_embeddings=True in the preset
    new_state, old_state = new.policy.state_dict(), old.state_dict()
    assert new_state.keys() == old_state.keys()
    for key, value in old_state.items():
        assert torch.equal(new_state[key], value) and new_state[key].dtype == value.dtype, key
    # Which parameters train is the fine-tuning mode's, as in an eager build.
    assert ({n for n, p in new.policy.named_parameters() if p.requires_grad}
            == {n for n, p in old.named_parameters() if p.requires_grad})

    batch = {CAM: torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
             STATE: torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), "task": ["push it", "open"]}
    torch.manual_seed(2)  # the flow head draws its noise from the global generator
    expected = old.predict_action_chunk(new.preprocessor(dict(batch)))
    torch.manual_seed(2)
    got = new.policy.predict_action_chunk(new.preprocessor(dict(batch)))
    assert torch.equal(got, expected)


def test_rotary_tables_are_computed_not_loaded(tiny_backbone, tmp_path):
    path = _saved_policy(tiny_backbone, tmp_path, "l1_chunk", "full")
    assert not any("inv_freq" in key for key in load_file(path / "model.safetensors"))  # non-persistent
    text = load_policy(path).policy.vlm.model.model.language_model.rotary_emb
    cfg = tiny_backbone[0].config.text_config
    dim = cfg.hidden_size // cfg.num_attention_heads  # 128 // 4 = 32: 16 frequencies
    theta = cfg.rope_parameters["rope_theta"]
    # RoFormer's table: theta ** (-2i / dim) for i = 0 .. dim/2 - 1.
    expected = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    assert text.inv_freq.shape == (16,) and text.inv_freq.dtype == torch.float32
    torch.testing.assert_close(text.inv_freq.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(text.original_inv_freq, text.inv_freq, rtol=0, atol=0)


def test_parameters_are_not_initialised_before_the_file_is_read(tiny_backbone, tmp_path):
    path = _saved_policy(tiny_backbone, tmp_path, "l1_chunk", "full")
    config = VSTVLAConfig.from_pretrained(path)
    built = VSTVLAPolicy(config, backbone_dir=str(path / "backbone"))
    assert all(p.is_meta for p in built.parameters())
    assert not any(b.is_meta for b in built.buffers())


def test_a_weights_file_missing_or_misshaping_a_weight_is_refused(tiny_backbone, tmp_path):
    path = _saved_policy(tiny_backbone, tmp_path, "l1_chunk", "full")
    weights = load_file(path / "model.safetensors")
    dropped = {k: v for k, v in weights.items() if not k.startswith("head.")}
    save_file(dropped, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsFileError, match=r"model.safetensors lacks \d+ weights of the policy, e.g. head\."):
        load_policy(path)
    key = next(k for k in weights if k.startswith("vlm.state_proj"))
    save_file({**weights, key: torch.zeros(1, 1)}, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsFileError, match=rf"weight {key} has shape \(1, 1\), the policy built"):
        load_policy(path)
