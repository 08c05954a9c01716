"""`vst-vla serve bundle=...`: load an export bundle and serve it over openpi's websocket protocol."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from policies.serving.server import PolicyServer, ServerConfig

log = logging.getLogger(__name__)


def server_config(cfg: DictConfig | dict[str, Any], device: str = "cpu") -> ServerConfig:
    """`ServerConfig` from the `server:` node of `configs/serve.yaml`."""
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(set(values) - set(ServerConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown server option(s) {unknown}; known: {sorted(ServerConfig.__dataclass_fields__)}")
    return ServerConfig(**{**values, "device": device})


def prompt_budget(loaded: Any, spec: Any) -> tuple[Any, int]:
    """The policy's prompt token counter and the room its context leaves for the prompt's text segment:
    `max_position_embeddings` minus everything else one request puts in the sequence (images, template,
    state and query tokens), measured on one real request."""
    from policies.export import sample_batch

    vlm, n_query = loaded.policy.vlm, loaded.policy.head.n_query
    counter = vlm.prompt_token_counter(len(spec.cameras))
    batch = sample_batch(spec, prompts=("x",))
    inputs = vlm.build_inputs([batch[key] for key in loaded.config.image_features], ["x"], n_query=n_query)
    fixed = int(inputs.input_ids.shape[1]) - counter("x")
    return counter, int(vlm.model.config.text_config.max_position_embeddings) - fixed


def state_range(bundle_path: Path, spec: Any) -> tuple[Any, Any] | None:
    """The training data's state (min, max) from the bundle's `normalization.json`, when it has them."""
    stats = json.loads((bundle_path / "normalization.json").read_text()).get(spec.state_key or "", {})
    return (stats["min"], stats["max"]) if "min" in stats and "max" in stats else None


def build_server(bundle_path: str, cfg: DictConfig | dict[str, Any], device: str = "cpu",
                 verify: bool = True, **overrides: Any) -> PolicyServer:
    """A `PolicyServer` for the bundle at `bundle_path` (not yet listening); `overrides` go to `load_policy`
    (a compiled policy is warmed up there, before the server listens)."""
    from policies.export import load_bundle

    bundle = load_bundle(bundle_path, device=device, verify=verify, **overrides)
    card = {"bundle": bundle.path.name, "policy": bundle.manifest.get("policy", {}),
            "created": bundle.manifest.get("created")}
    counter, context_room = prompt_budget(bundle.policy, bundle.spec)
    return PolicyServer(bundle.policy, bundle.spec, bundle.limits, bundle.n_action_steps,
                        server_config(cfg, device), metadata=card, prompt_tokens=counter,
                        max_context_tokens=context_room, state_range=state_range(bundle.path, bundle.spec),
                        execution=bundle.policy.config.execution_metadata())


def run(cfg: DictConfig) -> None:
    """Serve until interrupted."""
    from vst_vla.hydra_run import setup_torch
    from vst_vla.runtime import resolve_device

    setup_torch(cfg)
    if not cfg.get("bundle"):
        raise ValueError("bundle is not set: vst-vla serve bundle=/path/to/bundle (from `vst-vla export`)")
    device = str(resolve_device(cfg.get("device", "cpu")))
    overrides = {key: cfg[key] for key in ("compile", "compile_mode", "compile_backend", "compile_scope") if cfg.get(key) is not None}
    server = build_server(str(cfg.bundle), cfg.server, device=device, verify=bool(cfg.get("verify", True)),
                          **overrides)
    if server.config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the policy is reachable from the network%s", server.config.host,
                    "" if server.config.api_key else " WITHOUT authentication (set server.api_key)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
