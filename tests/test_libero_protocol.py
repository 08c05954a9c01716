"""The LIBERO protocol as data (no simulator needed): axis-angle state, the half-turn, the suites' budgets,
and the env=libero configs composing with the suite shortcut."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.libero_protocol import SUITE_MAX_STEPS, quat_to_axis_angle, rotate_180


def test_quaternion_to_axis_angle_matches_hand_values():
    # 90 degrees about z: q = (0, 0, sin 45, cos 45) -> axis (0, 0, 1) * pi/2.
    s = math.sqrt(0.5)
    assert np.allclose(quat_to_axis_angle(np.array([0.0, 0.0, s, s])), [0.0, 0.0, math.pi / 2])
    # 180 degrees about x (w = 0): (1, 0, 0) * pi; the identity gives zeros.
    assert np.allclose(quat_to_axis_angle(np.array([1.0, 0.0, 0.0, 0.0])), [math.pi, 0.0, 0.0])
    assert np.allclose(quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)


def test_rotation_is_a_half_turn_and_budgets_are_openpis():
    image = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    assert rotate_180(image)[0, 0].tolist() == image[1, 2].tolist()  # top-left <- bottom-right
    assert SUITE_MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                               "libero_10": 520, "libero_90": 400}


def test_libero_configs_compose_with_suite_shortcut(compose):
    cfg = compose("eval-sim", ["env=libero", "suite=libero_object", "task_ids=[0,2]"])
    assert cfg.env.suite == "libero_object" and list(cfg.env.task_ids) == [0, 2]
    assert cfg.task == "libero_spatial" and cfg.policy._target_ == "sim.env_spec.scripted_expert"
    assert compose("collect", ["env=metaworld"]).env.task == "pick-place"


def _env_observation(size: int) -> dict:
    rng = np.random.default_rng(0)
    return {"observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.images.image2": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.state": np.arange(8, dtype=np.float32)}


def test_client_speaks_openpis_libero_keys_to_a_server_without_a_spec():
    from policies.serving.libero_client import RequestLayout

    layout = RequestLayout({}, "auto")  # openpi servers send no observation spec
    request = layout.request(_env_observation(256), "put the bowl on the plate", first=True)
    assert layout.mode == "openpi" and layout.render_size == 256
    assert set(request) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
    assert request["observation/image"].shape == (224, 224, 3) and request["observation/image"].dtype == np.uint8
    assert request["observation/state"].tolist() == list(range(8))


def test_client_follows_the_served_spec_and_opens_episodes_with_reset():
    from policies.serving.libero_client import RequestLayout

    spec = {"required": {"observation.images.image": {"shape": [64, 64, 3], "dtype": "uint8"},
                         "observation.state": {"shape": [8], "dtype": "float32"}, "prompt": {"type": "str"}},
            "optional": {"reset": {"type": "bool"}}}
    layout = RequestLayout({"observation": spec}, "auto")
    first = layout.request(_env_observation(64), "go", first=True)
    later = layout.request(_env_observation(64), "go", first=False)
    assert layout.mode == "lerobot" and layout.cameras == {"agentview": "observation.images.image"}
    assert set(first) == {"observation.images.image", "observation.state", "prompt", "reset"} and first["reset"]
    assert "reset" not in later
    wrong = {"required": {**spec["required"], "observation.state": {"shape": [4], "dtype": "float32"}}}
    with pytest.raises(ValueError, match=r"observation.state of shape \[8\]"):
        RequestLayout({"observation": wrong}, "auto")
