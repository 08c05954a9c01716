"""The serving section of `bench/real_size.py`: one robot's round trip through the real `vst-vla serve`.

The saved `l1_chunk` policy is exported to a bundle; `vst-vla serve` runs it in a child process on 127.0.0.1
(eager, then with `compile=true`, which warms up before listening); one websocket client speaking openpi's
protocol (msgpack-numpy) sends camera frames of the bundle's shape and times each reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from serve_load import _free_port, load, start_server

log = logging.getLogger("bench.real_size_serve")


def export(policy_dir: Path, root: Path) -> Path:
    """The bundle `vst-vla serve` loads, written from a saved policy directory."""
    from policies.export import export_bundle

    return export_bundle(policy_dir, root / "bundle", {"card": {"training_data": "none (real-size bench)"}})


def served_latency(bundle: Path, root: Path, device: str, requests: int, compiled: bool, settings,
                   startup_timeout_s: float) -> dict:
    """p50/p99 milliseconds of one client's requests (after 3 warm-up requests) and the server's start-up;
    compiled with the compile settings of `settings` (a `PolicySettings`)."""
    overrides = [f"device={device}", f"compile={str(compiled).lower()}"]  # eager stays eager on CUDA (auto)
    if compiled:
        overrides += [f"compile_mode={settings.compile_mode}",
                      f"compile_backend={settings.compile_backend}", f"compile_scope={settings.compile_scope}"]
    port = _free_port()
    start = time.perf_counter()
    try:
        server = start_server(bundle, port, root, max_batch=1, overrides=overrides, timeout_s=startup_timeout_s)
    except RuntimeError as err:
        return {"error": str(err).splitlines()[0][:200] + f" (log: {root}/serve-{port}.log)"}
    startup = time.perf_counter() - start
    try:
        asyncio.run(load(port, 1, 3))
        result = asyncio.run(load(port, 1, requests))
    finally:
        server.terminate()
        server.wait(60)
    return {**result, "startup_s": startup}


def serve_lines(results: dict[str, dict], device_label: str) -> list[str]:
    lines = []
    for name, r in results.items():
        if "error" in r:
            lines.append(f"  {name:<9} FAILED: {r['error']}")
            continue
        lines.append(f"  {name:<9} p50 {r['p50_ms']:8.1f} ms   p99 {r['p99_ms']:8.1f} ms   {r['requests']} requests, "
                     f"errors={r['errors']}, server start-up {r['startup_s']:.1f} s   ({device_label}, loopback)")
    if all("error" not in r for r in results.values()) and len(results) == 2:
        eager, compiled = results["eager"], results["compiled"]
        lines.append(f"  ratio compiled / eager served p50 latency: {compiled['p50_ms'] / eager['p50_ms']:.2f}x")
    return lines
