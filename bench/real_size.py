"""Real-size benchmark: a randomly initialised Qwen2.5-VL with the real 3B or 7B dimensions (nothing downloaded),
measured side by side in one run.

    python bench/real_size.py --size 3b --device cuda        # a GPU (bench/real_size_gpu.sh prepares one)
    python bench/real_size.py --size small                   # CPU, about a minute; --quick for the test

Sections (`--only` picks some): `sft` packed SFT vs TRL's SFTTrainer on the same samples (real tokens/s, MFU =
6 x params x real tokens / time / device peak); `loss` one step on the fullest pack per SFT `loss.impl` (plain full
logits, chunked, liger on CUDA): activation and peak memory side by side; `vla` one training step per head; `latency` chunk latency per
head vs the bare prefill, eager and compiled (`policies.compiled`); `load` loading a saved policy vs reading
its safetensors; `serve` one client's round trip through `vst-vla serve` on loopback, eager and compiled.
Ratios print next to absolute figures; absolute figures are labelled with the device. `--json-out` keeps them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other bench modules
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from real_size_model import SIZES, build_backbone_dir, count_parameters, device_name, peak_flops
from real_size_policy import PolicySettings
from real_size_sft import SFTSettings

log = logging.getLogger("bench.real_size")
SECTIONS = ("sft", "loss", "vla", "latency", "load", "serve")

# Per size: SFT samples and batches (the same per-step token budget order for both trainers), policy sizes.
PRESETS = {
    "3b": {"sft": SFTSettings(samples=48, image_size=448, max_images=4, pack_tokens=8192, packs_per_step=1,
                              trl_batch=8, gradient_checkpointing=True),
           "policy": PolicySettings(image_size=224, train_batch=8, train_steps=3, repeats=20,
                                    compile_mode="default", compile_backend="inductor"),
           "serve_requests": 20, "startup_timeout_s": 420.0, "load_baseline": False},
    "small": {"sft": SFTSettings(samples=16, image_size=112, max_images=2, pack_tokens=1024, packs_per_step=2,
                                 trl_batch=4, gradient_checkpointing=False),
              "policy": PolicySettings(image_size=56, train_batch=2, train_steps=2, repeats=10,
                                       compile_mode="default", compile_backend="inductor"),
              "serve_requests": 10, "startup_timeout_s": 300.0, "load_baseline": True},
}
PRESETS["7b"] = PRESETS["3b"]
# --quick (the test): fewer samples and repeats; TorchDynamo capture without inductor's minutes of C++ codegen.
QUICK = {"sft": {"samples": 6}, "policy": {"train_steps": 1, "repeats": 3, "compile_backend": "aot_eager"},
         "serve_requests": 3}


def settings_for(args) -> dict:
    """The preset of `--size`, shrunk by `--quick` and overridden by the command line."""
    preset = dict(PRESETS[args.size])
    if args.quick:
        preset["sft"] = dataclasses.replace(preset["sft"], **QUICK["sft"])
        preset["policy"] = dataclasses.replace(preset["policy"], **QUICK["policy"])
        preset["serve_requests"] = QUICK["serve_requests"]
    sft_changes = {k: v for k, v in {"samples": args.samples, "pack_tokens": args.pack_tokens,
                                     "trl_batch": args.trl_batch, "image_size": args.sft_image_size}.items()
                   if v is not None}
    policy_changes = {k: v for k, v in {"compile_mode": args.compile_mode, "compile_scope": args.compile_scope,
                                        "repeats": args.repeats, "image_size": args.policy_image_size}.items()
                      if v is not None}
    preset["sft"] = dataclasses.replace(preset["sft"], **sft_changes)
    preset["policy"] = dataclasses.replace(preset["policy"], **policy_changes)
    return preset


def run_sections(args, preset: dict, model_dir: Path, root: Path, device: str, label: str) -> dict:
    """Run the chosen sections in order, printing each as it finishes; returns every result."""
    from real_size_policy import (
        build_policies,
        chunk_latencies,
        latency_lines,
        load_seconds,
        train_step_seconds,
    )

    from vst_vla.backbone import load_backbone

    results: dict = {}
    backbone = load_backbone({"source": str(model_dir), "device": device})
    params = count_parameters(backbone[0])
    results["params"] = params
    print(f"backbone: {args.size}, {params / 1e9:.3f}B parameters, {next(backbone[0].parameters()).dtype}, "
          f"attention {backbone[0].config._attn_implementation}", flush=True)
    if "sft" in args.only:
        from real_size_sft import compare_sft, sft_lines

        s = preset["sft"]
        print(f"\n[sft] {s.samples} samples, 1-{s.max_images} images of {s.image_size} px; ours: packs of "
              f"{s.pack_tokens} tokens x {s.packs_per_step} per step; TRL: {s.trl_batch} samples per step; "
              f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}", flush=True)
        results["sft"] = compare_sft(backbone[0], backbone[1], device, s, peak_flops(device, args.peak_tflops))
        print("\n".join(sft_lines(results["sft"], label)), flush=True)
    if "loss" in args.only:
        from real_size_loss import loss_section

        results["loss"] = loss_section(backbone, preset["sft"], device, label)
    p = preset["policy"]
    policies = build_policies(backbone, p, device) if set(args.only) & {"vla", "latency", "load", "serve"} else {}
    if "vla" in args.only:
        print(f"\n[vla] one optimiser step (forward, backward, AdamW), batch {p.train_batch}, one {p.image_size} px "
              "camera, best of the steps after a warm-up", flush=True)
        results["vla"] = {head: train_step_seconds(loaded, p, device) for head, loaded in policies.items()}
        for head, r in results["vla"].items():
            text = f"FAILED: {r['error']}" if "error" in r else f"{r['seconds'] * 1e3:9.1f} ms per step on {label}"
            print(f"  {head:<9} {text}", flush=True)
    if "latency" in args.only:
        print(f"\n[latency] one chunk from prepared inputs, best of {p.repeats}; compiled: {p.compile_backend}, "
              f"mode {p.compile_mode}, scope {p.compile_scope}", flush=True)
        eager = chunk_latencies(policies, p, device, compiled=False)
        try:
            compiled = chunk_latencies(policies, p, device, compiled=True)
        except Exception as err:
            log.exception("compiled latency failed")
            compiled, results["latency_compile_error"] = None, f"{type(err).__name__}: {err}"[:300]
            print(f"  compiled: FAILED {results['latency_compile_error']}")
        results["latency"] = {"eager": eager, "compiled": compiled}
        chunks = {head: loaded.config.chunk_size for head, loaded in policies.items()}
        print("\n".join(latency_lines(eager, compiled, chunks, label)), flush=True)
    if "load" in args.only or "serve" in args.only:
        baseline = args.load_baseline or preset["load_baseline"]
        results["load"] = load = load_seconds(policies["l1_chunk"], root, device, baseline)
        old_path = f"; random-init build then copy {load['random_init_load_s']:.1f} s" if baseline else ""
        print(f"\n[load] l1_chunk policy: load_policy (meta-device build) {load['load_s']:.1f} s vs reading its "
              f"safetensors {load['read_s']:.1f} s = {load['load_s'] / load['read_s']:.1f}x (target <= 2x at 3B; "
              f"{label}){old_path}", flush=True)
    if "serve" in args.only:
        from real_size_serve import export, serve_lines, served_latency

        policies.clear()
        backbone = None  # the server process loads its own copy
        torch.cuda.empty_cache() if device.startswith("cuda") else None
        bundle = export(Path(results["load"]["path"]), root)
        modes = {"eager": False} if args.serve_eager_only else {"eager": False, "compiled": True}
        results["serve"] = {name: served_latency(bundle, root, device, preset["serve_requests"], compiled,
                                                 p, preset["startup_timeout_s"])
                            for name, compiled in modes.items()}
        print(f"\n[serve] vst-vla serve on 127.0.0.1, one client, {preset['serve_requests']} requests after 3 "
              "warm-up requests", flush=True)
        print("\n".join(serve_lines(results["serve"], label)), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats (the test)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device dense bf16 peak for MFU")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--pack-tokens", type=int, default=None)
    parser.add_argument("--trl-batch", type=int, default=None)
    parser.add_argument("--sft-image-size", type=int, default=None)
    parser.add_argument("--policy-image-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--compile-mode", default=None, help="default | reduce-overhead | max-autotune...")
    parser.add_argument("--compile-scope", default=None, choices=["language_model", "layers"])
    parser.add_argument("--load-baseline", action="store_true",
                        help="also time the old random-init policy loading (default at small size only)")
    parser.add_argument("--serve-eager-only", action="store_true", help="skip the compiled server")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a backbone built by an earlier run")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    preset = settings_for(args)
    label = device_name(args.device)
    print(f"real-size benchmark: size {args.size}, device {label}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="real_size_") as tmp:
        root = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None or not (model_dir / "config.json").is_file():
            model_dir = model_dir or root / "backbone"
            max_pixels = max(preset["sft"].image_size, preset["policy"].image_size) ** 2
            _, seconds = build_backbone_dir(args.size, model_dir, args.device, max_pixels)
            print(f"built a random {args.size} backbone in {seconds:.1f} s ({model_dir})", flush=True)
        results = run_sections(args, preset, model_dir, root, args.device, label)
    if args.json_out:
        args.json_out.write_text(json.dumps({"size": args.size, "device": label, **results}, indent=1, default=str))
    failed = [k for k, v in results.items() if isinstance(v, dict) and any(
        isinstance(x, dict) and "error" in x for x in v.values())]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
