"""Success statistics of two policy arms (tuned vs control) trained with several seeds and evaluated on episodes.

An arm is a list of seeds, each a list of 0/1 episode outcomes. Its success rate is the mean over all its
episodes, with a Wilson interval over the pooled episodes and a two-level bootstrap interval that also counts the
spread between training seeds. The difference (tuned minus control) gets the same two-level bootstrap: each
replicate resamples the seeds of each arm with replacement, then the episodes of each drawn seed with
replacement, and takes the difference of the pooled rates; the interval is the replicates' percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.eval_report import wilson_interval

Arm = Sequence[Sequence[int | bool]]  # seeds x episodes, 1 = success


@dataclass(frozen=True)
class ArmSummary:
    """One arm's pooled success over its seeds' episodes."""

    seeds: int
    episodes: int
    successes: int
    rate: float
    wilson: tuple[float, float]
    bootstrap: tuple[float, float]
    per_seed: tuple[float, ...]


@dataclass(frozen=True)
class Comparison:
    """Tuned vs control: both arms and the difference of their rates with its bootstrap interval."""

    tuned: ArmSummary
    control: ArmSummary
    difference: float
    interval: tuple[float, float]
    replicates: int

    @property
    def excludes_zero(self) -> bool:
        return self.interval[0] > 0 or self.interval[1] < 0

    def sentence(self) -> str:
        """The result in one sentence: which arm won, by how much, and whether the interval excludes zero."""
        low, high = self.interval
        if self.difference > 0:
            lead = f"The tuned arm beat the control by {100 * self.difference:.1f} points"
        elif self.difference < 0:
            lead = f"The control beat the tuned arm by {100 * -self.difference:.1f} points"
        else:
            lead = "The tuned arm and the control tied"
        verdict = "excludes zero" if self.excludes_zero else "includes zero: no detectable difference"
        return (f"{lead} ({100 * self.tuned.rate:.1f} % vs {100 * self.control.rate:.1f} % success over "
                f"{self.tuned.seeds}+{self.control.seeds} seeds, {self.tuned.episodes}+{self.control.episodes} "
                f"episodes); the 95 % bootstrap interval of the difference, [{100 * low:+.1f}, {100 * high:+.1f}] "
                f"points, {verdict}.")


def _as_arrays(arm: Arm) -> list[np.ndarray]:
    seeds = [np.asarray(outcomes, dtype=float) for outcomes in arm]
    if not seeds or any(s.size == 0 for s in seeds):
        raise ValueError("an arm needs at least one seed, and every seed at least one episode")
    return seeds


def _resampled_rates(seeds: list[np.ndarray], rng: np.random.Generator, replicates: int) -> np.ndarray:
    """Pooled success rate of `replicates` two-level bootstrap draws (seeds, then episodes within each seed)."""
    rates = np.empty(replicates)
    for r in range(replicates):
        drawn = rng.integers(len(seeds), size=len(seeds))
        wins = total = 0.0
        for index in drawn:
            outcomes = seeds[index]
            wins += outcomes[rng.integers(outcomes.size, size=outcomes.size)].sum()
            total += outcomes.size
        rates[r] = wins / total
    return rates


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def summarize_arm(arm: Arm, rates: np.ndarray, level: float = 0.95) -> ArmSummary:
    """`arm`'s pooled rate, Wilson interval and the bootstrap interval of its resampled `rates`."""
    seeds = _as_arrays(arm)
    successes, episodes = int(sum(s.sum() for s in seeds)), sum(s.size for s in seeds)
    return ArmSummary(len(seeds), episodes, successes, successes / episodes, wilson_interval(successes, episodes),
                      _percentiles(rates, level), tuple(float(s.mean()) for s in seeds))


def compare_arms(tuned: Arm, control: Arm, replicates: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> Comparison:
    """Both arms' summaries and the bootstrap interval of tuned minus control (deterministic for `seed`)."""
    rng = np.random.default_rng(seed)
    tuned_seeds, control_seeds = _as_arrays(tuned), _as_arrays(control)
    tuned_rates = _resampled_rates(tuned_seeds, rng, replicates)
    control_rates = _resampled_rates(control_seeds, rng, replicates)
    a, b = summarize_arm(tuned, tuned_rates, level), summarize_arm(control, control_rates, level)
    return Comparison(a, b, a.rate - b.rate, _percentiles(tuned_rates - control_rates, level), replicates)
