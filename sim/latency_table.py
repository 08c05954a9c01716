"""The latency table: execution mode x simulated inference delay -> success (95 % Wilson interval) and mean
squared action jerk, gathered from `vst-vla eval-sim ... inference_delay_steps=d` runs.

    for mode in open_loop temporal_ensemble rtc; do for d in 0 2 4 8; do
      vst-vla eval-sim policy=vst_vla policy.path=DIR policy.execution_mode=$mode inference_delay_steps=$d \
          task=reach episodes=30 output_dir=runs/latency/${mode}_d$d
    done; done
    python -m sim.latency_table runs/latency       # prints the table, writes runs/latency/latency.{md,json}

Every cell runs the same seeds (eval-sim's `seed`, episode i uses seed + i), so cells differ only by mode and delay.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from vst_vla.atomic import write_json, write_text

log = logging.getLogger(__name__)

MODE_ORDER = ("open_loop", "temporal_ensemble", "rtc")


def read_cells(root: str | Path) -> list[dict[str, Any]]:
    """One row per eval.json under `root` that was run with simulated latency, sorted by mode then delay."""
    cells = []
    for path in sorted(Path(root).glob("*/eval.json")):
        report = json.loads(path.read_text())
        latency = report.get("meta", {}).get("latency")
        if not latency:
            log.warning("%s was run without inference_delay_steps: left out of the latency table", path)
            continue
        cells.append({"mode": latency["execution_mode"], "delay": int(latency["inference_delay_steps"]),
                      "episodes": report["n_episodes"], "successes": report["successes"],
                      "success_rate": report["success_rate"], "ci95_low": report["ci95_low"],
                      "ci95_high": report["ci95_high"], "mean_sq_jerk": report.get("mean_sq_jerk"),
                      "mean_length": report["mean_length"], "seed": report["meta"].get("seed"),
                      "tasks": report["meta"].get("tasks"), "source": str(path)})
    if not cells:
        raise FileNotFoundError(f"no <run>/eval.json with a latency setting under {root}: run eval-sim with "
                                "inference_delay_steps=d and output_dir=<root>/<run>")
    if len({(json.dumps(c["tasks"]), c["seed"], c["episodes"]) for c in cells}) > 1:
        raise ValueError(f"the runs under {root} differ in tasks, seed or episodes: cells must share their seeds")
    rank = {mode: i for i, mode in enumerate(MODE_ORDER)}
    return sorted(cells, key=lambda c: (rank.get(c["mode"], len(rank)), c["mode"], c["delay"]))


def to_markdown(cells: list[dict[str, Any]]) -> str:
    """The table, one row per (mode, delay)."""
    first = cells[0]
    header = (f"Tasks {', '.join(first['tasks'] or [])}; {first['episodes']} episodes per cell, seeds "
              f"{first['seed']}..{first['seed'] + first['episodes'] - 1} in every cell.")
    lines = [header, "",
             "| mode | delay d | success | 95 % CI | mean sq jerk | mean length |", "|---|---|---|---|---|---|"]
    for c in cells:
        jerk = "n/a" if c["mean_sq_jerk"] is None else f"{c['mean_sq_jerk']:.4g}"
        lines.append(f"| {c['mode']} | {c['delay']} | {c['successes']}/{c['episodes']} = {c['success_rate']:.1%} | "
                     f"{c['ci95_low']:.0%} - {c['ci95_high']:.0%} | {jerk} | {c['mean_length']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder whose subfolders are eval-sim output_dirs")
    args = parser.parse_args(argv)
    cells = read_cells(args.root)
    table = to_markdown(cells)
    write_text(Path(args.root) / "latency.md", table)
    write_json(Path(args.root) / "latency.json", cells)
    print(table, end="")


if __name__ == "__main__":
    main()
