"""Action safety limits: bounds and per-step change enforced, counted, and stored losslessly."""

from __future__ import annotations

import numpy as np
import pytest

from policies.safety import ActionLimits, LimitsError, SafetyFilter


def _limits(**kw) -> ActionLimits:
    base = {"action_dim": 3, "low": [-1.0, -1.0, 0.0], "high": [1.0, 1.0, 0.5], "max_delta": [0.25, 0.25, 1.0]}
    return ActionLimits(**{**base, **kw})


def test_bounds_clip_and_count():
    safe, report = SafetyFilter(_limits(max_delta=None)).apply(np.array([[2.0, -3.0, 0.2]]))
    np.testing.assert_array_equal(safe, np.array([[1.0, -1.0, 0.2]], dtype=np.float32))
    assert (report.clipped_bounds, report.clipped_rate, report.clipped) == (2, 0, 2)
    assert report.to_dict()["clipped_per_dim"] == [1, 1, 0]


def test_rate_limit_holds_across_calls_and_resets():
    f = SafetyFilter(_limits())
    f.apply(np.array([[0.0, 0.0, 0.0]]))
    safe, report = f.apply(np.array([[0.9, -0.1, 0.5], [0.9, -0.9, 0.5]]))
    # Each action moves at most max_delta from the one served before it, across the call boundary too.
    np.testing.assert_allclose(safe, [[0.25, -0.1, 0.5], [0.5, -0.35, 0.5]], atol=1e-7)
    assert report.clipped_rate == 3 and report.clipped_bounds == 0
    assert report.clipped_total == 3 and report.per_dim == [2, 1, 0]
    f.reset()  # a new episode may start anywhere inside the bounds
    safe, report = f.apply(np.array([[-0.9, 0.9, 0.1]]))
    np.testing.assert_allclose(safe, [[-0.9, 0.9, 0.1]], atol=1e-7)
    assert report.clipped == 0


def test_served_actions_always_within_limits():
    lim = _limits()
    f = SafetyFilter(lim)
    rng = np.random.default_rng(0)
    previous = None
    for _ in range(50):
        safe, _ = f.apply(rng.normal(scale=3.0, size=(4, 3)))
        assert (safe >= lim.low).all() and (safe <= lim.high).all()
        rows = safe if previous is None else np.vstack([previous, safe])
        assert (np.abs(np.diff(rows, axis=0)) <= lim.max_delta + 1e-6).all()
        previous = safe[-1:]


def test_nonfinite_actions_hold_the_previous_action():
    f = SafetyFilter(_limits(max_delta=None))
    first, report = f.apply(np.array([[np.nan, 0.0, np.inf]]))
    np.testing.assert_array_equal(first, [[0.0, 0.0, 0.0]])  # zero clipped into the bounds before any action
    assert report.nonfinite == 2
    f.apply(np.array([[0.3, 0.4, 0.2]]))
    held, _ = f.apply(np.array([[np.nan, 0.1, 0.2]]))
    np.testing.assert_allclose(held, [[0.3, 0.1, 0.2]], atol=1e-7)


def test_limits_from_stats_and_file_round_trip(tmp_path):
    lim = ActionLimits.from_stats({"min": [-1.0, 0.0], "max": [1.0, 2.0]}, margin=0.1, max_delta_fraction=0.5,
                                  names=("x", "grip"))
    np.testing.assert_allclose(lim.low, [-1.2, -0.2], atol=1e-6)
    np.testing.assert_allclose(lim.high, [1.2, 2.2], atol=1e-6)
    np.testing.assert_allclose(lim.max_delta, [1.2, 1.2], atol=1e-6)
    back = ActionLimits.load(lim.save(tmp_path / "action_limits.json"))
    for name in ("low", "high", "max_delta"):
        np.testing.assert_array_equal(getattr(back, name), getattr(lim, name))
    assert back.names == ("x", "grip")


@pytest.mark.parametrize(("kw", "match"), [
    ({"low": [0.0, 0.0, 1.0]}, r"low\[2\].*above high\[2\]"),
    ({"high": [1.0, 1.0]}, "'high' has shape \\[2\\], expected \\[3\\]"),
    ({"max_delta": [0.1, 0.0, 0.1]}, "max_delta.*positive"),
])
def test_inconsistent_limits_raise(kw, match):
    with pytest.raises(LimitsError, match=match):
        _limits(**kw)


def test_wrong_action_width_raises():
    with pytest.raises(LimitsError, match=r"expected \[n, 3\]"):
        SafetyFilter(_limits()).apply(np.zeros((2, 4)))


def test_an_element_clipped_by_bounds_and_rate_counts_once():
    f = SafetyFilter(_limits())
    f.apply(np.zeros((1, 3)))
    safe, report = f.apply(np.array([[5.0, 0.0, 0.0]]))  # bounds take 5 -> 1, the rate limit 1 -> 0.25
    np.testing.assert_allclose(safe, [[0.25, 0.0, 0.0]])
    assert (report.clipped_bounds, report.clipped_rate, report.clipped, report.per_dim) == (1, 1, 1, [1, 0, 0])
