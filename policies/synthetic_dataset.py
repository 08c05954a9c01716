"""A small LeRobotDataset v3 written locally: random camera images, a state and an action that depends on it.

For tests and benchmarks of the policy when no collected dataset is at hand. The action is a fixed linear
function of the state plus the mean brightness of the first camera, so a head can learn something in a few
steps; the images are random noise at `image_size` pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_synthetic_dataset(root: str | Path, episodes: int = 3, frames: int = 12, image_size: int = 64,
                           cameras: tuple[str, ...] = ("front",), state_dim: int = 4, action_dim: int = 4,
                           fps: int = 10, task: str = "pick up the red block", seed: int = 0,
                           repo_id: str = "local/vst_vla_synthetic"):
    """Create, fill and finalize a LeRobotDataset at `root`; returns it (read it back with `LeRobotDataset`)."""
    from lerobot.datasets import LeRobotDataset

    rng = np.random.default_rng(seed)
    features = {f"observation.images.{cam}": {"dtype": "image", "shape": (image_size, image_size, 3),
                                              "names": ["height", "width", "channels"]} for cam in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    dataset = LeRobotDataset.create(repo_id, fps, features, root=root, use_videos=False)
    mixing = rng.normal(size=(state_dim, action_dim)).astype(np.float32)
    for _ in range(episodes):
        state = rng.normal(size=state_dim).astype(np.float32)
        for _ in range(frames):
            frame = {f"observation.images.{cam}": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                     for cam in cameras}
            brightness = frame[f"observation.images.{cameras[0]}"].mean() / 255.0
            frame["observation.state"] = state
            frame["action"] = (np.tanh(state @ mixing) + brightness).astype(np.float32)
            frame["task"] = task
            dataset.add_frame(frame)
            state = (state + 0.1 * rng.normal(size=state_dim)).astype(np.float32)
        dataset.save_episode()
    dataset.finalize()
    return dataset
