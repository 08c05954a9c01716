"""Serving a policy to robots over openpi's websocket protocol (msgpack with numpy arrays)."""

from policies.serving.protocol import ObservationSpec, ProtocolError, validate_observation
from policies.serving.server import PolicyServer, ServerConfig, ServerThread

__all__ = ["ObservationSpec", "PolicyServer", "ProtocolError", "ServerConfig", "ServerThread", "validate_observation"]
