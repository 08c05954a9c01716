"""ACT's temporal ensembling (Zhao et al. 2023, Algorithm 2; LeRobot's `ACTTemporalEnsembler`).

A chunk is predicted at every control step, so step t has up to `chunk_size` predictions of its action, one
from each of the last chunks. The executed action is their average weighted by w_i = exp(-coeff * i), i = 0
for the OLDEST prediction (ACT's convention: a positive coefficient trusts older predictions more; ACT uses
0.01). Kept as an explicit history rather than LeRobot's running average: identical numbers, easier to read.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class TemporalEnsembler:
    """Feed one `[chunk_size, action_dim]` chunk per control step; get the ensembled action for this step."""

    def __init__(self, coeff: float, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"temporal ensembling needs chunk_size >= 1, got {chunk_size}")
        self.coeff, self.chunk_size = float(coeff), int(chunk_size)
        self.reset()

    def reset(self) -> None:
        """Forget every prediction (a new episode)."""
        # Oldest first; the chunk predicted k steps ago contributes its action k for this step.
        self._chunks: deque = deque(maxlen=self.chunk_size)

    def weights(self, n: int) -> np.ndarray:
        """Normalised weights of `n` predictions of one step, oldest first."""
        raw = np.exp(-self.coeff * np.arange(n, dtype=np.float64))
        return raw / raw.sum()

    def update(self, chunk):
        """Add the chunk `[..., chunk_size, action_dim]` (numpy or torch) predicted at this step and return the
        ensembled action `[..., action_dim]` to execute, of the same type."""
        if chunk.ndim < 2 or chunk.shape[-2] != self.chunk_size:
            raise ValueError(f"expected a chunk of shape [..., {self.chunk_size}, action_dim], got {list(chunk.shape)}")
        self._chunks.append(chunk)
        n = len(self._chunks)
        # The chunk at position i (oldest first) was predicted n-1-i steps ago: its action n-1-i is for now.
        weights = self.weights(n)
        return sum(float(w) * c[..., n - 1 - i, :] for i, (w, c) in enumerate(zip(weights, self._chunks, strict=True)))
