"""Tuned-vs-control statistics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from vst_vla.arm_stats import compare_arms


def test_pooled_rate_and_wilson_interval():
    # 1 success in 20 episodes: p = 0.05, z = 1.96; denominator 1 + z^2/n = 1.19208, centre
    # (0.05 + z^2/40) / 1.19208 = 0.12251, half-width 1.96 * sqrt(0.05 * 0.95 / 20 + z^2 / 1600) / 1.19208 = 0.11363
    result = compare_arms([[1] + [0] * 19], [[0] * 20], replicates=200)
    assert result.tuned.rate == 0.05 and result.tuned.successes == 1 and result.tuned.episodes == 20
    assert result.tuned.wilson == pytest.approx((0.00888, 0.23614), abs=1e-4)


def test_difference_interval_of_a_two_episode_arm():
    # Tuned [1, 0] vs control [0, 0]: a replicate's difference is the mean of two draws from {1, 0}, so it is
    # 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4; the 2.5th and 97.5th percentiles are 0 and 1.
    result = compare_arms([[1, 0]], [[0, 0]], replicates=4000, seed=3)
    assert result.difference == 0.5
    assert result.interval == (0.0, 1.0)
    assert not result.excludes_zero


def test_seed_spread_widens_the_interval_beyond_the_pooled_wilson():
    # Two seeds, one always succeeding and one always failing (4 episodes each): resampling seeds gives rates 1,
    # 0.5, 0 with probabilities 1/4, 1/2, 1/4 (episodes within a constant seed never change), so the bootstrap
    # interval is [0, 1], while the pooled Wilson interval of 4/8 is [0.2152, 0.7848]
    # (centre 0.5, half-width 1.96 * sqrt(0.25 / 8 + z^2 / 256) / (1 + z^2 / 8) = 0.2848).
    result = compare_arms([[1, 1, 1, 1], [0, 0, 0, 0]], [[0, 0, 0, 0]], replicates=4000, seed=1)
    assert result.tuned.rate == 0.5 and result.tuned.per_seed == (1.0, 0.0)
    assert result.tuned.wilson == pytest.approx((0.2152, 0.7848), abs=1e-4)
    assert result.tuned.bootstrap == (0.0, 1.0)
    assert result.interval == (0.0, 1.0)


def test_clear_win_excludes_zero_and_says_so():
    result = compare_arms([[1] * 50] * 3, [[0] * 50] * 3, replicates=500)
    assert result.interval == (1.0, 1.0) and result.excludes_zero
    assert result.sentence().startswith("The tuned arm beat the control by 100.0 points")
    assert "excludes zero" in result.sentence()
    flipped = compare_arms([[0] * 50] * 3, [[1, 0] * 25] * 3, replicates=500)
    assert flipped.sentence().startswith("The control beat the tuned arm by 50.0 points")


def test_same_seed_same_interval_and_bad_input():
    arms = ([[1, 0, 1, 1], [0, 1, 0, 0]], [[0, 0, 1, 0], [1, 0, 0, 0]])
    assert compare_arms(*arms, replicates=300, seed=5) == compare_arms(*arms, replicates=300, seed=5)
    with pytest.raises(ValueError, match="at least one episode"):
        compare_arms([[]], [[1]])
    assert np.isfinite(compare_arms(*arms, replicates=300).difference)
