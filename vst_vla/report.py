"""The pipeline's report: `report.md` and `report.html` with matplotlib plots, from the stages' artifacts.

Each section reads one stage's artifact and says "not run" when it is missing, so a partial pipeline still
reports what it has.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from vst_vla.atomic import write_text

log = logging.getLogger(__name__)


def _load_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _load_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _figure(path: Path, draw) -> Path | None:
    """Draw with `draw(ax)` into a PNG at `path` (None when there is nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    try:
        if draw(ax) is False:
            return None
        fig.tight_layout()
        fig.savefig(path)
        return path
    finally:
        plt.close(fig)


def sft_section(root: Path, fig_dir: Path) -> tuple[list[str], list[Path]]:
    metrics = _load_json(root / "sft" / "sft_metrics.json")
    if not metrics:
        return ["SFT: not run."], []
    losses = metrics.get("train_losses", [])

    def draw(ax):
        if not losses:
            return False
        ax.plot(range(1, len(losses) + 1), losses, label="train loss")
        ax.set_xlabel("logging step")
        ax.set_ylabel("loss")
        ax.set_title("Spatial SFT (packed)")
        ax.legend()

    fig = _figure(fig_dir / "sft_loss.png", draw)
    lines = [(f"Held-out loss {metrics.get('eval_loss_start', float('nan')):.4f} -> "
             f"{metrics.get('eval_loss_end', float('nan')):.4f} "
             f"({100 * metrics.get('eval_loss_ratio', float('nan')):.1f}% of start); "
             f"{metrics.get('train_tokens', 0)} tokens trained; checkpoint `{metrics.get('checkpoint')}`.")]
    return lines, [fig] if fig else []


def rl_section(root: Path, fig_dir: Path) -> tuple[list[str], list[Path]]:
    rows = [r for r in _load_jsonl(root / "rl" / "rl_log.jsonl") if any(k.startswith("reward") for k in r)]
    summary = _load_json(root / "rl" / "rl_summary.json") or {}
    if not rows and not summary:
        return ["RL: not run."], []
    keys = sorted({k for r in rows for k in r if k.startswith("reward") and "std" not in k})

    def draw(ax):
        if not rows:
            return False
        import numpy as np

        for key in keys:
            points = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if key in r]
            steps, values = np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)
            # Per-step group rewards are noisy at this size: a trailing mean over 10 steps shows the trend.
            window = min(10, len(values))
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            line, = ax.plot(steps[window - 1:], smooth, label=f"{key} (mean of {window})")
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.set_title("GRPO / DAPO reward components")
        ax.legend(fontsize=7)

    fig = _figure(fig_dir / "rl_rewards.png", draw)
    lines = ["| quantity | first 20 % of steps | last 20 % of steps |", "|---|---|---|"]
    for quantity in ("reward", "accuracy", "format"):
        first, last = summary.get(f"{quantity}_first_20pct"), summary.get(f"{quantity}_last_20pct")
        if first is not None and last is not None:
            lines.append(f"| mean {quantity} | {first:.4f} | {last:.4f} |")
    lines += ["", f"{summary.get('steps', len(rows))} GRPO steps; checkpoint `{summary.get('checkpoint')}`."]
    return lines, [fig] if fig else []


def spatial_section(root: Path, fig_dir: Path) -> tuple[list[str], list[Path]]:
    metrics = _load_json(root / "eval_spatial" / "metrics.json")
    table = root / "eval_spatial" / "metrics.md"
    if not metrics:
        return ["Spatial evaluation: not run."], []
    checkpoints = metrics["checkpoints"]
    skills = sorted({s for r in checkpoints.values() for s in r["skills"]})

    def draw(ax):
        import numpy as np

        width = 0.8 / (len(checkpoints) + 1)
        x = np.arange(len(skills))
        chance = [next(r["skills"][s]["chance"] for r in checkpoints.values() if s in r["skills"]) for s in skills]
        ax.bar(x, chance, width, label="chance", color="lightgray")
        for i, (name, result) in enumerate(checkpoints.items(), start=1):
            ax.bar(x + i * width, [result["skills"].get(s, {}).get("value", 0.0) for s in skills], width, label=name)
        ax.set_xticks(x + width * len(checkpoints) / 2, skills, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("score")
        ax.set_title("Spatial metrics per skill")
        ax.legend(fontsize=7)

    fig = _figure(fig_dir / "spatial_metrics.png", draw)
    body = table.read_text().split("\n", 2)[-1].strip() if table.is_file() else ""
    return [f"{metrics['n_samples']} held-out samples.", "", body], [fig] if fig else []


def _success(result: dict) -> tuple[float, float, float]:
    nan = float("nan")
    return result.get("success_rate", nan), result.get("ci95_low", nan), result.get("ci95_high", nan)


def arm_outcomes(root: Path, stage: str) -> dict[str, list[int]]:
    """Episode outcomes (1 = success) of an evaluation stage, per training seed: `<stage>_s<k>/eval.json` for
    a seeded pipeline, else `<stage>/eval.json` as one seed."""
    found = sorted(root.glob(f"{stage}_s*/eval.json"), key=lambda p: int(p.parent.name.rsplit("_s", 1)[1]))
    if not found and (root / stage / "eval.json").is_file():
        found = [root / stage / "eval.json"]
    outcomes = {}
    for path in found:
        episodes = (_load_json(path) or {}).get("episodes", [])
        if episodes:
            outcomes[path.parent.name] = [int(bool(e["success"])) for e in episodes]
    return outcomes


ARMS = (("tuned (VST RL backbone)", "eval_sim"), ("control (untuned backbone)", "eval_sim_control"))


def arm_comparison(root: Path):
    """`vst_vla.arm_stats.Comparison` of the tuned and control arms, or None when either has no episodes."""
    from vst_vla.arm_stats import compare_arms

    tuned, control = (arm_outcomes(root, stage) for _, stage in ARMS)
    if not tuned or not control:
        return None
    return compare_arms(list(tuned.values()), list(control.values()))


def sim_section(root: Path, fig_dir: Path) -> tuple[list[str], list[Path]]:
    arms = {name: arm_outcomes(root, stage) for name, stage in ARMS}
    arms = {k: v for k, v in arms.items() if v}
    if not arms:
        return ["Simulation evaluation: not run."], []
    from vst_vla.arm_stats import compare_arms

    comparison = arm_comparison(root)
    summaries = {name: (comparison.tuned if name == ARMS[0][0] else comparison.control) if comparison else
                 compare_arms(list(seeds.values()), list(seeds.values()), replicates=2000).tuned
                 for name, seeds in arms.items()}
    lines = ["| arm | seeds | episodes | success | 95% Wilson (pooled) | 95% bootstrap (seeds, episodes) | per seed |",
             "|---|---|---|---|---|---|---|"]
    for name, a in summaries.items():
        per_seed = ", ".join(f"{r:.2f}" for r in a.per_seed)
        lines.append(f"| {name} | {a.seeds} | {a.episodes} | {a.rate:.3f} | [{a.wilson[0]:.3f}, {a.wilson[1]:.3f}] | "
                     f"[{a.bootstrap[0]:.3f}, {a.bootstrap[1]:.3f}] | {per_seed} |")
    if comparison:
        low, high = comparison.interval
        lines += ["", (f"Difference (tuned - control): {comparison.difference:+.3f}, 95% bootstrap interval "
                       f"[{low:+.3f}, {high:+.3f}] ({comparison.replicates} replicates resampling seeds, then "
                       "episodes within each seed).")]

    def draw(ax):
        names = list(summaries)
        rates = [summaries[n].rate for n in names]
        errors = [[r - summaries[n].bootstrap[0] for n, r in zip(names, rates)],
                  [summaries[n].bootstrap[1] - r for n, r in zip(names, rates)]]
        ax.bar(range(len(names)), rates, yerr=errors, capsize=6, color=["tab:blue", "tab:gray"][: len(names)])
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("success rate")
        ax.set_title("MetaWorld success: tuned vs control (bootstrap 95%)")

    fig = _figure(fig_dir / "sim_success.png", draw)
    return lines, [fig] if fig else []


def rollout_gif(root: Path, fig_dir: Path) -> Path | None:
    """The first rollout video of the tuned policy, as a small GIF (plays in markdown viewers too)."""
    folder = next((f for f in (root / "eval_sim", root / "eval_sim_s0") if f.is_dir()), root / "eval_sim")
    videos = sorted(folder.rglob("*.mp4"))
    if not videos:
        return None
    import imageio.v3 as iio

    frames = iio.imread(videos[0], plugin="pyav")
    gif = fig_dir / "rollout.gif"
    iio.imwrite(gif, frames[::2], duration=80, loop=0)
    return gif


def timings_section(summary: dict) -> list[str]:
    lines = ["| stage | command | seconds | |", "|---|---|---|---|"]
    for name, record in summary["stages"].items():
        lines.append(f"| {name} | `vst-vla {record['command']}` | {record['seconds']} | "
                     f"{'skipped (done before)' if record.get('skipped') else ''} |")
    total = round(sum(r["seconds"] for r in summary["stages"].values()), 1)
    lines.append(f"| **all stages** | | {total} | |")
    lines.append(f"| this invocation (wall) | | {summary['wall_seconds']} | peak RSS {summary['peak_rss_mb']} MB |")
    return lines


def environment_section() -> list[str]:
    from vst_vla.info import collect_info

    return [f"- {k}: {v}" for k, v in collect_info().items()]


def write_report(root: Path, summary: dict) -> Path:
    """Write `report.md` and a self-contained `report.html` (images inlined) under `root`."""
    fig_dir = root / "report_files"
    fig_dir.mkdir(exist_ok=True)
    sections: list[tuple[str, list[str], list[Path]]] = []
    for title, build in (("Spatial SFT", sft_section), ("Spatial RL", rl_section),
                         ("Spatial metrics per skill", spatial_section), ("Simulation: tuned vs control", sim_section)):
        try:
            lines, figures = build(root, fig_dir)
        except Exception as err:
            log.exception("report section %s failed", title)
            lines, figures = [f"(section failed: {err})"], []
        sections.append((title, lines, figures))
    gif = rollout_gif(root, fig_dir)
    sections.append(("Rollout", [] if gif else ["no video recorded"], [gif] if gif else []))
    sections.append(("Stage timings", timings_section(summary), []))
    sections.append(("Environment", environment_section(), []))
    try:
        comparison = arm_comparison(root)
    except Exception:
        log.exception("tuned-vs-control comparison failed")
        comparison = None
    headline = comparison.sentence() if comparison else "Tuned vs control: not evaluated in this run."
    backbone = summary.get("backbone")
    about = ([f"Backbone: `{backbone['name']}` ({backbone['family']} family, source `{backbone['source']}`)."]
             if backbone else [])
    sections.insert(0, ("Result", [headline, "", *about], []))
    md = ["# VST-VLA pipeline report", "", f"Output folder: `{root}`", ""]
    for title, lines, figures in sections:
        md += [f"## {title}", "", *lines, ""]
        md += [f"![{f.stem}]({f.relative_to(root)})" for f in figures] + [""]
    report_md = write_text(root / "report.md", "\n".join(md))
    write_text(root / "report.html", _html(sections, root))
    return report_md


def _html(sections, root: Path) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>VST-VLA pipeline report</title>",
             ("<style>body{font-family:sans-serif;max-width:980px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"),
             f"<h1>VST-VLA pipeline report</h1><p>Output folder: <code>{html.escape(str(root))}</code></p>"]
    for title, lines, figures in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_markdown_lines_to_html(lines))
        for fig in figures:
            mime = "image/gif" if fig.suffix == ".gif" else "image/png"
            data = base64.b64encode(fig.read_bytes()).decode()
            parts.append(f"<img alt='{fig.stem}' src='data:{mime};base64,{data}'>")
    return "\n".join(parts)


def _markdown_lines_to_html(lines: list[str]) -> str:
    """Tables and bullet lines as HTML; everything else as paragraphs."""
    out, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not set(line.replace("|", "").strip()) <= {"-", " "}:
                table.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>")
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)
