"""Real-time chunking (Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow Policies",
arXiv 2506.07339) for our flow head, and the executor that drives it step by step.

While chunk A_prev executes, the next chunk is sampled from the observation of step t; it is ready d steps
later (the inference delay), so its first d actions are already committed: they are A_prev's next d actions.
Sampling is guided inpainting (the paper's Eq. 2-5, PiGDM-style): at each denoising step the velocity is
corrected by the vector-Jacobian product of the weighted error between the target Y (A_prev's remaining
actions, zero-padded) and the one-step estimate of the clean chunk, through the velocity network. Weights
are 1 on the d frozen actions, decay exponentially over the rest of the overlap, and are 0 past it.

Our flow convention (pi0 / LeRobot): noise at t = 1, actions at t = 0, x_{t-dt} = x_t - dt * v, and the
clean estimate is x_t - t * v. The paper's time runs the other way: tau = 1 - t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def prefix_weights(delay: int, overlap: int, chunk_size: int) -> Tensor:
    """The paper's Eq. 5 soft mask [chunk_size]: 1 for i < d; c_i (e^{c_i} - 1) / (e - 1) with
    c_i = (H - s - i) / (H - s - d + 1) for d <= i < H - s; 0 for i >= H - s, where H - s = `overlap` is the
    number of actions left of the previous chunk."""
    if not 0 <= delay <= overlap <= chunk_size:
        raise ValueError(f"RTC needs 0 <= delay ({delay}) <= overlap ({overlap}) <= chunk_size ({chunk_size})")
    i = torch.arange(chunk_size, dtype=torch.float32)
    c = (overlap - i) / (overlap - delay + 1)
    soft = c * torch.expm1(c) / (math.e - 1)
    return torch.where(i < delay, torch.ones_like(i), torch.where(i < overlap, soft, torch.zeros_like(i)))


def guidance_weight(t: float, max_weight: float) -> float:
    """The paper's guidance weight min(beta, (1 - tau) / tau / r_tau^2), r_tau^2 = (1-tau)^2 / (tau^2 + (1-tau)^2),
    with tau = 1 - t (our t = 1 is noise)."""
    tau = 1.0 - t
    if tau <= 0.0 or tau >= 1.0:  # the formula diverges at both ends: the cap (LeRobot's nan_to_num too)
        return max_weight
    inv_r2 = (tau**2 + (1 - tau) ** 2) / (1 - tau) ** 2
    return min(max_weight, (1 - tau) / tau * inv_r2)


def rtc_sample(velocity: Callable[[Tensor, int], Tensor], noise: Tensor, target: Tensor, weights: Tensor,
               num_steps: int, max_guidance: float = 5.0) -> Tensor:
    """Euler integration from `noise` [B, H, A] (t = 1) to actions (t = 0) with RTC guidance towards
    `target` [B, H, A] under `weights` [H] or [B, H] (one mask per row); `velocity(x, step)` is the flow
    network at step's time."""
    x = noise.detach()
    dt = 1.0 / num_steps
    w = weights.to(x.device, x.dtype)
    w = (w[None] if w.ndim == 1 else w)[..., None]
    for step in range(num_steps):
        t = 1.0 - step * dt
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            v = velocity(x_in, step)
            clean = x_in - t * v
            error = (target - clean) * w
            correction = torch.autograd.grad(clean, x_in, grad_outputs=error.detach())[0]
        # Subtracting the correction from v moves x towards the target as t falls.
        x = (x - dt * (v.detach() - guidance_weight(t, max_guidance) * correction)).detach()
    return x


class RTCExecutor:
    """Step-by-step execution with real-time chunking, for a policy that predicts in-process (eval, robots
    running the policy locally): `next_action(sample)` returns the action of this step, calling
    `sample(target, weights)` (a guided chunk; `target` None for the first chunk) every `execution_horizon`
    steps. The new chunk's first `delay` actions are the committed ones (the previous chunk's), exactly: they
    are what the robot executes while the chunk is computed; the rest follows the new chunk."""

    def __init__(self, chunk_size: int, execution_horizon: int, delay: int = 0) -> None:
        if not 0 <= delay <= execution_horizon <= chunk_size - delay:
            raise ValueError(f"RTC needs 0 <= inference_delay_steps ({delay}) <= n_action_steps "
                             f"({execution_horizon}) <= chunk_size ({chunk_size}) - inference_delay_steps")
        self.chunk_size, self.horizon, self.delay = chunk_size, execution_horizon, delay
        self.reset()

    def reset(self) -> None:
        """A new episode."""
        self._chunk: Tensor | None = None
        self._index = 0  # the next action of `_chunk` to execute

    def next_action(self, sample: Callable[[Tensor | None, Tensor | None], Tensor]) -> Tensor:
        """The action [B, A] to execute now; `sample(target, weights) -> [B, H, A]` runs the policy."""
        if self._chunk is None:
            self._chunk, self._index = sample(None, None), 0
        elif self._index >= self.horizon:
            remaining = self._chunk[:, self._index:]  # H - s actions; the first d run during inference
            overlap = remaining.shape[1]
            target = torch.zeros_like(self._chunk)
            target[:, :overlap] = remaining
            new = sample(target, prefix_weights(self.delay, overlap, self.chunk_size)).clone()
            new[:, : self.delay] = remaining[:, : self.delay]  # committed: executed during the inference
            self._chunk, self._index = new, 0
        action = self._chunk[:, self._index]
        self._index += 1
        return action

