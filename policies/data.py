"""LeRobot datasets for the policy: features into the config, statistics, chunked loading, augmentation.

Augmentation runs on each training batch (`SeededImageAugmentation`), not in the dataset's `__getitem__`: its
random draws are a function of (seed, optimizer step, micro-batch, process) alone, so a resumed run augments
exactly like an uninterrupted one and the global RNG (dropout, flow noise) is left to the Trainer's checkpoints.

Statistics: LeRobot v3 stores per-episode quantiles and averages them across episodes, which is narrower than
the dataset's own 1st/99th percentiles when episodes differ (the tokens head would then clip real actions).
`dataset_stats` recomputes the state and action statistics over every frame, exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.configs import FeatureType
from lerobot.utils.constants import ACTION, OBS_STATE

from policies.configuration_vst_vla import VSTVLAConfig
from policies.processor_vst_vla import NormalizationError
from vst_vla.video_decoding import dataset_has_video, quiet_torchcodec

log = logging.getLogger(__name__)


def open_dataset(root: str | Path, config: VSTVLAConfig | None = None, image_transforms=None,
                 episodes: list[int] | None = None):
    """The LeRobotDataset at `root` (local only); with `config`, actions come as chunks of `chunk_size`."""
    from lerobot.datasets import LeRobotDataset, LeRobotDatasetMetadata

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    repo_id = f"local/{root.name}"
    quiet_torchcodec(video_in_use=dataset_has_video(root))  # image datasets never need torchcodec
    if config is None:
        return LeRobotDataset(repo_id, root=root, episodes=episodes)
    fps = LeRobotDatasetMetadata(repo_id, root=root).fps
    delta_timestamps = {ACTION: [i / fps for i in config.action_delta_indices]}
    return LeRobotDataset(repo_id, root=root, delta_timestamps=delta_timestamps, image_transforms=image_transforms,
                          episodes=episodes)


def set_features(config: VSTVLAConfig, dataset_features: dict[str, dict]) -> VSTVLAConfig:
    """Fill the config's input/output features from a dataset's features; a config that already has features
    (fine-tuning a saved policy) must match them exactly."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    features = dataset_to_policy_features(dataset_features)
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if k not in outputs and f.type in (FeatureType.VISUAL, FeatureType.STATE)}
    if config.input_features or config.output_features:
        have = {k: tuple(f.shape) for k, f in {**config.input_features, **config.output_features}.items()}
        want = {k: tuple(f.shape) for k, f in {**inputs, **outputs}.items()}
        if have != want:
            raise NormalizationError(f"the dataset's features {want} differ from the policy's {have}")
    config.input_features, config.output_features = inputs, outputs
    config.ignored_observation_keys = sorted(k for k in features if k.startswith("observation.") and k not in inputs)
    config.validate_features()
    return config


def dataset_stats(dataset, keys: tuple[str, ...] = (OBS_STATE, ACTION)) -> dict[str, dict[str, Any]]:
    """The dataset's statistics with exact whole-dataset mean/std/min/max/q01/q99 for `keys`."""
    stats = {k: dict(v) for k, v in dataset.meta.stats.items()}
    table = dataset.hf_dataset.with_format("numpy")
    for key in keys:
        if key not in dataset.meta.features:
            continue
        values = np.stack(table[key]).astype(np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise NormalizationError(f"dataset column {key!r} has shape {values.shape}, expected [frames, dim]")
        stats[key] = {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0),
                      "q01": np.quantile(values, 0.01, axis=0), "q99": np.quantile(values, 0.99, axis=0),
                      "count": np.array([len(values)])}
    return stats


def make_image_augmentation(image_size: int, crop_scale: float = 0.9, brightness: float = 0.2,
                            contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.05):
    """Random resized crop (area in [crop_scale, 1]) and colour jitter for one [3, H, W] float image."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), ratio=(1.0, 1.0), antialias=True),
        v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue),
    ])


class SeededImageAugmentation:
    """Augments every camera image of a training batch, one independent draw per image, with randomness derived
    from (seed, step, micro_batch, process) only: the same batch position always gets the same augmentation."""

    def __init__(self, transform, camera_keys: list[str] | tuple[str, ...], seed: int):
        self.transform = transform
        self.camera_keys = tuple(camera_keys)
        self.seed = int(seed)

    def draw_seed(self, step: int, micro_batch: int = 0, process: int = 0) -> int:
        """The seed of the draws for one micro-batch: a hash of its position in the run."""
        sequence = np.random.SeedSequence([self.seed, int(step), int(micro_batch), int(process)])
        return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)

    def __call__(self, batch: dict[str, Any], step: int, micro_batch: int = 0, process: int = 0) -> dict[str, Any]:
        batch = dict(batch)
        # torchvision draws its parameters from torch's global CPU generator: fork it so the model's own
        # randomness is unaffected, and seed it from the batch's position.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.draw_seed(step, micro_batch, process))
            for key in self.camera_keys:
                if key in batch:
                    batch[key] = torch.stack([self.transform(image) for image in batch[key]])
        return batch
