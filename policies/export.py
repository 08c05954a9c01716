"""`vst-vla export`: a trained policy directory -> a self-contained bundle a robot host loads offline.

Bundle layout (written atomically, marked `_COMPLETE`):
    policy/              the policy directory: config.json, model.safetensors (every weight), backbone/ (HF
                         config, tokenizer, processor), pre/post-processor JSON + statistics (safetensors)
    normalization.json   the normalisation statistics in readable form (the processors hold the live copy)
    action_limits.json   per-dimension bounds and max change per step, enforced by `vst-vla serve`
    robot_spec.json      what the robot sends (camera keys and sizes, state width, prompt) and gets back
    README.md            the model card: training data, evaluation results, intended robot, limits
    heads/               optional (`torchscript_heads=true`): TorchScript of a continuous head, checked vs PyTorch
    bundle.json          manifest: format, policy summary, package versions, sha256 of every file
Weights are only ever read from safetensors; a policy directory holding pickled weights is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from policies.model_card import render_model_card
from policies.safety import ActionLimits
from policies.serving.protocol import ObservationSpec, to_batch, validate_observation
from vst_vla.atomic import PARTIAL_MARKER, atomic_directory, is_complete, write_json, write_text

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "vst-vla-bundle/1"
BUNDLE_KIND = "vst_vla-bundle"
POLICY_SUBDIR = "policy"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_PACKAGES = ("vst-vla", "torch", "transformers", "lerobot", "safetensors", "numpy")


class BundleError(ValueError):
    """A policy directory that cannot be exported, or a bundle that cannot be loaded; names the file."""


@dataclass
class Bundle:
    """A loaded bundle: the policy (raw batches in, env-unit actions out) and what serving needs around it."""

    path: Path
    policy: Any  # policies.loading.LoadedPolicy
    spec: ObservationSpec
    limits: ActionLimits
    manifest: dict[str, Any]

    @property
    def n_action_steps(self) -> int:
        return int(self.policy.config.n_action_steps)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refuse_pickles(directory: Path) -> None:
    pickles = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise BundleError(f"{directory} holds pickled files {pickles}: weights must be safetensors only")


def _check_policy_dir(policy_dir: Path) -> None:
    if not policy_dir.is_dir():
        raise BundleError(f"policy directory {policy_dir} does not exist")
    for name in ("config.json", "model.safetensors", "backbone/config.json", "policy_preprocessor.json",
                 "policy_postprocessor.json"):
        if not (policy_dir / name).is_file():
            raise BundleError(f"{policy_dir} is not a trained vst_vla policy directory: {name} is missing")
    _refuse_pickles(policy_dir)


def collect_stats(loaded: Any) -> dict[str, dict[str, list]]:
    """The normalisation statistics held by the policy's processors, as nested lists per feature."""
    stats: dict[str, dict[str, list]] = {}
    for pipeline in (loaded.preprocessor, loaded.postprocessor):
        for step in pipeline.steps:
            for key, values in (getattr(step, "stats", None) or {}).items():
                entry = stats.setdefault(key, {})
                for name, value in values.items():
                    entry[name] = np.asarray(torch.as_tensor(value).cpu(), dtype=np.float64).tolist()
    return stats


def derive_limits(stats: dict[str, dict[str, list]], cfg: DictConfig | dict, action_dim: int) -> ActionLimits:
    """Action limits: explicit `low/high/max_delta` from the config win, else the action min/max (or q01/q99)
    widened by `margin`; `max_delta_fraction` of the range sets the per-step change when `max_delta` is unset."""
    cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    low, high = cfg.get("low"), cfg.get("high")
    if low is None or high is None:
        action_stats = stats.get("action", {})
        low_key, high_key = ("min", "max") if "min" in action_stats else ("q01", "q99")
        if low_key not in action_stats:
            raise BundleError(f"no action statistics to derive limits from (have {sorted(action_stats)}); "
                              "set limits.low and limits.high")
        base = ActionLimits.from_stats({"min": action_stats[low_key], "max": action_stats[high_key]},
                                       margin=float(cfg.get("margin", 0.05)), max_delta_fraction=None)
        low = base.low if low is None else list(low)
        high = base.high if high is None else list(high)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    delta, fraction = cfg.get("max_delta"), cfg.get("max_delta_fraction")
    if delta is None and fraction is not None:
        delta = float(fraction) * (high - low)
    return ActionLimits(action_dim=action_dim, low=low, high=high, max_delta=None if delta is None else list(delta),
                        names=tuple(cfg.get("names") or ()))


def _versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _policy_summary(loaded: Any, spec: ObservationSpec) -> dict[str, Any]:
    config = loaded.config
    return {"type": "vst_vla", "head": config.head, "chunk_size": int(config.chunk_size),
            "n_action_steps": int(config.n_action_steps), "action_dim": int(loaded.action_dim),
            "image_size": int(config.image_size), "use_state": bool(config.use_state),
            "prompt_template": config.prompt_template, "backbone_source": str(config.backbone),
            "cameras": list(spec.cameras), "state_dim": spec.state_dim}


def _read_optional_json(path: Any, what: str) -> Any:
    if not path:
        return None
    path = Path(str(path))
    if not path.is_file():
        raise BundleError(f"{what} file {path} does not exist")
    return json.loads(path.read_text())


def export_bundle(policy_dir: str | Path, out_dir: str | Path, cfg: DictConfig | dict | None = None) -> Path:
    """Write the bundle for a trained policy directory; `cfg` holds `limits`, `card`, `overwrite`, `device`."""
    from policies import load_policy

    cfg = OmegaConf.create(cfg or {}) if not isinstance(cfg, DictConfig) else cfg
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    _check_policy_dir(policy_dir)
    loaded = load_policy(str(policy_dir), device=str(cfg.get("device", "cpu")))
    spec = ObservationSpec.from_features(loaded.config.input_features)
    stats = collect_stats(loaded)
    limits = derive_limits(stats, cfg.get("limits") or {}, int(loaded.action_dim))
    card_cfg = OmegaConf.to_container(cfg.get("card") or OmegaConf.create({}), resolve=True)
    training_run = policy_dir.parent / "train_metrics.json"  # written next to policy/ by `vst-vla vla`
    if training_run.is_file():
        card_cfg.setdefault("training_run", json.loads(training_run.read_text()))
    eval_results = _read_optional_json(card_cfg.get("eval_results"), "evaluation results")
    summary = _policy_summary(loaded, spec)
    with atomic_directory(out_dir, overwrite=bool(cfg.get("overwrite", False)), kind=BUNDLE_KIND) as tmp:
        shutil.copytree(policy_dir, tmp / POLICY_SUBDIR, ignore=shutil.ignore_patterns("_COMPLETE", ".*"))
        write_json(tmp / "normalization.json", stats)
        limits.save(tmp / "action_limits.json")
        write_json(tmp / "robot_spec.json", {"observation": spec.to_dict(), "action_dim": limits.action_dim,
                                             "action_names": list(limits.names), "robot": card_cfg.get("robot"),
                                             "fps": card_cfg.get("fps")})
        write_text(tmp / "README.md", render_model_card(summary, limits, spec, card_cfg, eval_results))
        torchscript = _export_torchscript(loaded, spec, tmp / "heads") if cfg.get("torchscript_heads") else None
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*"))
                 if p.is_file() and p.name != PARTIAL_MARKER}  # the marker goes when the bundle is complete
        write_json(tmp / "bundle.json", {
            "format": BUNDLE_FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source_policy_dir": str(policy_dir.resolve()), "policy": summary, "versions": _versions(),
            "torchscript": torchscript, "files": files})
    log.info("exported %s -> %s (%d files)", policy_dir, out_dir, len(files) + 1)
    return out_dir


def sample_batch(spec: ObservationSpec, prompts: tuple[str, ...] = ("push the button", "open the drawer"),
                 seed: int = 0) -> dict[str, Any]:
    """A raw LeRobot batch of random observations matching `spec` (export-time checks)."""
    rng = np.random.default_rng(seed)
    observations = [validate_observation({
        **{key: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for key, (h, w) in spec.cameras.items()},
        **({spec.state_key: rng.normal(size=spec.state_dim).astype(np.float32)} if spec.state_key else {}),
        spec.prompt_key: prompt}, spec) for prompt in prompts]
    return to_batch(observations, spec)


def _export_torchscript(loaded: Any, spec: ObservationSpec, out_dir: Path) -> dict[str, Any]:
    from policies.head_export import CONTINUOUS_HEADS, export_head

    if loaded.config.head not in CONTINUOUS_HEADS:
        log.info("head %s is not continuous: no TorchScript export", loaded.config.head)
        return {"head": loaded.config.head, "skipped": f"only {list(CONTINUOUS_HEADS)} export"}
    return export_head(loaded, sample_batch(spec), out_dir)


def _verify_files(path: Path, manifest: dict[str, Any]) -> None:
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path}: {name} is missing")
        if _sha256(file) != expected:
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in bundle.json (corrupted or edited)")


def load_bundle(path: str | Path, device: str = "cpu", verify: bool = True, **overrides: Any) -> Bundle:
    """Load a bundle written by `export_bundle`; with `verify`, every file is checked against its sha256.
    `overrides` go to `load_policy` (e.g. `compile=True`)."""
    from policies import load_policy

    path = Path(path)
    if not is_complete(path) or not (path / "bundle.json").is_file():
        raise BundleError(f"{path} is not a complete bundle (no _COMPLETE marker or bundle.json): re-run export")
    manifest = json.loads((path / "bundle.json").read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}/bundle.json has format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    _refuse_pickles(path / POLICY_SUBDIR)  # heads/ may hold TorchScript for other runtimes; never read here
    if verify:
        _verify_files(path, manifest)
    policy = load_policy(str(path / POLICY_SUBDIR), device=device, **overrides)
    spec = ObservationSpec.from_dict(json.loads((path / "robot_spec.json").read_text())["observation"])
    limits = ActionLimits.load(path / "action_limits.json")
    if limits.action_dim != int(policy.action_dim):
        raise BundleError(f"{path}/action_limits.json has action_dim {limits.action_dim}, "
                          f"the policy has {policy.action_dim}")
    return Bundle(path=path, policy=policy, spec=spec, limits=limits, manifest=manifest)


def run(cfg: DictConfig) -> Path:
    """`vst-vla export policy_path=... [output_dir=...]`: write `<output_dir>/bundle` and load it back once."""
    from vst_vla.hydra_run import resolve_out, setup_torch

    setup_torch(cfg)
    if not cfg.get("policy_path"):
        raise BundleError("policy_path is not set: vst-vla export policy_path=/path/to/trained/policy")
    bundle_dir = export_bundle(cfg.policy_path, resolve_out(cfg, "output_dir") / "bundle", cfg)
    if cfg.get("verify", True):
        bundle = load_bundle(bundle_dir, device=str(cfg.get("device", "cpu")))
        log.info("bundle loads: head=%s action_dim=%d cameras=%s", bundle.manifest["policy"]["head"],
                 bundle.limits.action_dim, list(bundle.spec.cameras))
    print(f"bundle: {bundle_dir}")
    return bundle_dir
