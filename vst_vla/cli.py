"""The `vst-vla` command: one Hydra app per stage.

`vst-vla <command> [hydra overrides...]` composes `configs/<command>.yaml` and runs the stage's entry point
with the resolved config. Each run writes under `outputs/<command>/<date>/<time>/` with the resolved config
saved by Hydra in `.hydra/`. A failure is one line on stderr, exit 2 for a user error and 1 for a bug
(`vst_vla.errors`); `VST_VLA_DEBUG=1` or `hydra.verbose=true` adds the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from vst_vla.errors import EXIT_INTERRUPTED, debug_requested, report_failure
from vst_vla.paths import config_dir


@dataclass(frozen=True)
class Command:
    """A subcommand: its entry point (`module:function` taking the composed config) and a one-line help."""

    target: str
    help: str


# Entry points are imported lazily so `vst-vla --help` and `vst-vla info` stay fast.
COMMANDS: dict[str, Command] = {
    "info": Command("vst_vla.info:run", "versions, device, attention and the MuJoCo renderer that works"),
    "demo": Command("vst_vla.demo:run", "the main job on the embedded default (tiny backbone)"),
    "pipeline": Command("vst_vla.pipeline:run", "every stage chained in one resumable output folder, with a report"),
    "synth": Command("spatial_tuning.synth:run", "VST-P / VST-R parquet data from procedural MuJoCo scenes (exact 3D ground truth)"),
    "export": Command("policies.export:run", "a trained policy -> a self-contained bundle (safetensors, limits, card)"),
    "serve": Command("policies.serving.app:run", "serve a bundle to robots over openpi's websocket protocol (openpi-client)"),
    "sft": Command("spatial_tuning.sft:run", "packed multimodal SFT of the backbone on VST data (CoT cold start, LoRA, DDP)"),
    "rl": Command("spatial_tuning.grpo:run", "GRPO/DAPO with VST rewards through TRL, from an SFT checkpoint"),
    "eval-spatial": Command("spatial_tuning.eval_spatial:run", "checkpoints side by side per skill vs chance (MC, MRA, AP@15)"),
    "vla": Command("policies.train:run", "train the VLA policy (tokens | l1_chunk | flow head) on a LeRobot dataset"),
    "collect": Command("sim.collect:run", "scripted MetaWorld experts recorded into a LeRobot dataset"),
    "eval-sim": Command("sim.eval_sim:run", "vectorised MetaWorld rollouts of a policy: success, 95% CI, videos"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: vst-vla <command> [key=value ...] [hydra flags]",
        "",
        "Visual Spatial Tuning as a robotics VLA stack. Every command is a Hydra app: its config is",
        f"configs/<command>.yaml (config dir: {config_dir()}); override with key=value, see --cfg job.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "`vst-vla <command> --help` shows the command's config groups and options."]
    return "\n".join(lines)


def _resolve(target: str):
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_command(name: str, argv: list[str]) -> object:
    """Run command `name` as a Hydra app with `argv` as its overrides and flags.

    Errors propagate as the original exceptions (Hydra's own reporting, which prints a partial traceback, is
    bypassed), so the caller decides how to show them.
    """
    import hydra
    from omegaconf import DictConfig

    result: dict[str, object] = {}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=name)
    def _app(cfg: DictConfig) -> None:
        try:
            # The stage is imported after composition: a bad override is reported without its imports' wait.
            result["value"] = _resolve(COMMANDS[name].target)(cfg)
        except Exception as err:  # noqa: BLE001 (re-raised below: Hydra would print a partial traceback)
            result.setdefault("error", err)

    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    # Hydra reads sys.argv; it names the job after argv[0], which is how runs land in outputs/<command>/.
    sys.argv = [name, f"hydra.job.name={name}", *argv]
    # HYDRA_FULL_ERROR makes Hydra re-raise composition errors (bad override, unknown option) untouched.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _app()
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


def main(argv: list[str] | None = None) -> int:
    """`vst-vla <command> [overrides]`: 0 on success, 2 for a user error, 1 for a bug (see `vst_vla.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vst-vla: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # MuJoCo binds its GL backend when first imported, so the offscreen renderer is chosen before any stage
    # imports it (a child of the pipeline inherits the parent's checked choice and skips the probe).
    from vst_vla.runtime import select_mujoco_renderer
    from vst_vla.video_decoding import quiet_torchcodec

    try:
        select_mujoco_renderer()
    except RuntimeError as err:  # only the stages that render need it; they fail later with GL errors
        print(f"vst-vla: warning: {err}", file=sys.stderr)
    quiet_torchcodec()
    try:
        run_command(name, rest)
    except KeyboardInterrupt:
        print(f"vst-vla {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 (every failure becomes one line; see vst_vla.errors)
        return report_failure(name, err, debug=debug_requested(rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
