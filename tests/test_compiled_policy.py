"""Compiled policy inference (`policy.compile=true`): the same actions as eager, warmed up at load time.

CPU tests compile with the `aot_eager` backend (TorchDynamo capture + AOT autograd, the graphs inductor would
lower): inductor's C++ code generation takes minutes on two busy cores. `bench/real_size.py` times inductor.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from policy_fixtures import saved_tiny_policy

from policies.compiled import blank_observation, compile_enabled, compile_policy, compiled_modules
from policies.loading import load_policy

CAM, STATE = "observation.images.front", "observation.state"


def _saved_policy(head: str, tiny_backbone, root):
    return saved_tiny_policy(tiny_backbone, root / head, head)


@pytest.mark.parametrize(("head", "scope"), [("l1_chunk", "language_model"), ("flow", "layers")])
def test_compiled_policy_gives_eager_actions(head, scope, tiny_backbone, tmp_path):
    path = _saved_policy(head, tiny_backbone, tmp_path)
    eager = load_policy(path)
    compiled = load_policy(path, compile=True, compile_backend="aot_eager", compile_scope=scope)
    assert compiled.config.compile == "true" and eager.config.compile == "auto"  # auto: eager on CPU
    # Compiled in place at load time: the modules carry their compiled call, and their weights are unchanged.
    assert all(m._compiled_call_impl is not None for m in compiled_modules(compiled.policy, scope))
    assert all(m._compiled_call_impl is None for m in compiled_modules(eager.policy, scope))
    assert compiled.policy.state_dict().keys() == eager.policy.state_dict().keys()

    generator = torch.Generator().manual_seed(0)
    for task in ("push the button", "put the red block in the green bowl next to the cup"):
        batch = {CAM: torch.rand(2, 3, 64, 64, generator=generator), STATE: torch.randn(2, 3, generator=generator),
                 "task": [task, "open the drawer"]}
        torch.manual_seed(1)  # the flow head draws its noise from the global generator
        expected = eager.predict_action_chunk(dict(batch))
        torch.manual_seed(1)
        got = compiled.predict_action_chunk(dict(batch))
        assert got.shape == (2, 4, 2)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_blank_observation_and_bad_mode(tiny_backbone, tmp_path):
    path = _saved_policy("l1_chunk", tiny_backbone, tmp_path)
    loaded = load_policy(path)
    blank = blank_observation(loaded.config, "warm up")
    assert blank[CAM].shape == (1, 3, 64, 64) and blank[STATE].shape == (1, 3) and blank["task"] == ["warm up"]
    with pytest.raises(ValueError, match="compile_mode='fastest' is not one of default, reduce-overhead"):
        compile_policy(loaded.policy, mode="fastest")
    with pytest.raises(ValueError, match="compile_scope='vision' is not one of language_model, layers"):
        compile_policy(loaded.policy, scope="vision")


def test_compile_auto_is_eager_on_cpu_and_compiled_on_cuda(tiny_backbone, tmp_path, caplog):
    assert compile_enabled("auto", "cuda") and compile_enabled("auto", torch.device("cuda", 1), head="flow")
    assert not compile_enabled("auto", "cuda", head="tokens") and compile_enabled("true", "cuda", head="tokens")
    assert not compile_enabled("auto", "cpu") and compile_enabled(True, "cpu") and not compile_enabled("False", "cuda")
    with pytest.raises(ValueError, match="policy compile='sometimes' is not one of auto, true, false"):
        compile_enabled("sometimes", "cpu")
    path = _saved_policy("l1_chunk", tiny_backbone, tmp_path)
    assert json.loads((path / "config.json").read_text())["compile"] == "auto"  # the default, saved
    with caplog.at_level(logging.INFO, logger="policies.loading"):
        loaded = load_policy(path)
    assert "policy inference: eager (compile=auto on cpu)" in caplog.text
    assert all(m._compiled_call_impl is None for m in compiled_modules(loaded.policy, "language_model"))
    # A policy saved before `auto` existed holds `false`: it loads, and stays eager.
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "compile": False}))
    assert load_policy(path).config.compile == "false"


def test_serve_and_eval_sim_default_to_auto(compose):
    assert compose("serve").compile == "auto"
    assert compose("eval-sim", ["policy=vst_vla", "policy.path=/nowhere"]).policy.compile == "auto"
