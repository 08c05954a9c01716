"""The `small` backbone preset and `experiment=small`: sizes, cache keys, and the budgets the science run uses."""

from __future__ import annotations

import pytest
import torch

from vst_vla.backbone import BackboneConfig, tiny_spec
from vst_vla.families import tiny_family
from vst_vla.tiny import SIZE_PRESETS, TinySpec, build_config, build_tokenizer


def test_tiny_keeps_its_cache_key():
    # The key the tiny preset had before the size presets existed: its cached checkpoint is reused as is.
    assert TinySpec().cache_key() == "f0acb10706b3"
    assert tiny_spec(BackboneConfig()).cache_key() == "f0acb10706b3"


def test_small_is_the_same_model_from_its_config_and_from_its_name(compose):
    cfg = compose("sft", ["model=small"])
    assert cfg.model.source == "small" and tiny_family("small").name == "qwen2_5_vl"
    from_config = tiny_spec(BackboneConfig.from_any(cfg.model))
    from_name = tiny_spec(BackboneConfig.from_any("small"))  # how a saved policy names its backbone
    assert from_config == from_name == SIZE_PRESETS["small"]
    assert from_config.cache_key() != TinySpec().cache_key()


def test_small_is_a_real_qwen2_5_vl_of_10_to_30m_parameters():
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = SIZE_PRESETS["small"]
    config = build_config(spec, build_tokenizer(spec))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    count = sum(p.numel() for p in model.parameters())
    assert 10e6 <= count <= 30e6, count
    assert config.text_config.hidden_size == 384 and config.text_config.num_hidden_layers == 6


@pytest.mark.parametrize("name", ["pipeline", "sft", "rl", "vla", "eval-sim", "eval-spatial", "synth", "collect"])
def test_small_experiment_composes(compose, name):
    cfg = compose(name, ["experiment=small"])
    if "model" in cfg:
        assert cfg.model.source == "small"


def test_small_experiment_budgets_are_steps_and_the_comparison_has_power(compose):
    cfg = compose("pipeline", ["experiment=small"])
    assert list(cfg.vla_seeds) == [0, 1, 2]
    overrides = {k: list(v) for k, v in cfg.stage_overrides.items()}
    for stage in ("eval_sim", "eval_sim_control"):
        assert int(next(o for o in overrides[stage] if o.startswith("episodes=")).split("=")[1]) >= 50
    assert any(o.startswith("train.max_steps=") for o in overrides["vla"])
    assert overrides["vla"] == overrides["vla_control"]  # only the backbone differs between the arms
    rl = compose("rl", ["experiment=small"])
    assert rl.grpo.max_steps > 0 and rl.grpo.time_limit_s is None
    assert compose("sft", ["experiment=small"]).optim.max_steps > 0
    assert int(next(o for o in overrides["synth"] if o.startswith("counts_per_skill.test=")).split("=")[1]) >= 20


def test_the_rotary_base_override_reaches_the_model_config_and_its_cache_key():
    # `small` sets rope_theta (a randomly initialised model needs a low base to learn where things are in an
    # image); the override is part of the cache key, and presets that leave it unset keep their old keys.
    spec = SIZE_PRESETS["small"]
    assert spec.rope_theta == 10.0
    config = build_config(spec, build_tokenizer(spec))
    assert config.text_config.rope_parameters["rope_theta"] == 10.0
    assert config.vision_config.hidden_size == 192  # the vision tower's own rotary is untouched
    default = TinySpec(**{**spec.key_fields(), "rope_theta": None})
    assert build_config(default, build_tokenizer(default)).text_config.rope_parameters["rope_theta"] == 1_000_000.0
    assert spec.cache_key() != default.cache_key()
    assert "rope_theta" not in TinySpec().key_fields()
