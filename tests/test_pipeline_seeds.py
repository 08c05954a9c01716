"""Seeds per VLA arm in the pipeline, and the report's tuned-vs-control comparison over them."""

from __future__ import annotations

import json
from pathlib import Path

from vst_vla.pipeline import Layout, pipeline_stages, selected_stages, stage_argv


def test_vla_seeds_expand_arms_and_their_evaluations(compose, tmp_path):
    cfg = compose("pipeline", ["vla_seeds=[0,1,2]", "stage_overrides.vla=['train.max_steps=7']"])
    names = [s.name for s in pipeline_stages(cfg)]
    assert names == ["synth", "sft", "rl", "eval_spatial", "collect", "vla_s0", "vla_s1", "vla_s2",
                     "vla_control_s0", "vla_control_s1", "vla_control_s2", "eval_sim_s0", "eval_sim_s1",
                     "eval_sim_s2", "eval_sim_control_s0", "eval_sim_control_s1", "eval_sim_control_s2", "export"]
    stages = {s.name: s for s in selected_stages(cfg)}
    layout = Layout(tmp_path, "tiny")
    vla1 = stage_argv(stages["vla_s1"], layout, cfg)
    # the tuned arm trains on the RL checkpoint with its own seed; the base stage's overrides still apply
    assert f"model.source={tmp_path / 'rl' / 'checkpoint-final'}" in vla1
    assert "train.seed=1" in vla1 and "train.max_steps=7" in vla1 and f"output_dir={tmp_path / 'vla_s1'}" in vla1
    control2 = stage_argv(stages["vla_control_s2"], layout, cfg)
    assert "model.source=tiny" in control2 and "train.seed=2" in control2
    evaluation = stage_argv(stages["eval_sim_control_s2"], layout, cfg)
    assert f"policy.path={tmp_path / 'vla_control_s2' / 'policy'}" in evaluation
    export = stage_argv(stages["export"], layout, cfg)
    assert f"policy_path={tmp_path / 'vla_s0' / 'policy'}" in export


def test_without_seeds_the_stages_are_unchanged(compose):
    assert [s.name for s in pipeline_stages(compose("pipeline"))][5:] == [
        "vla", "vla_control", "eval_sim", "eval_sim_control", "export"]
    only = selected_stages(compose("pipeline", ["vla_seeds=[3,4]", "stages=[eval_sim]"]))
    assert [s.name for s in only] == ["eval_sim_s3", "eval_sim_s4"]


def _eval_json(folder: Path, outcomes: list[int]) -> None:
    folder.mkdir(parents=True)
    episodes = [{"task": "reach-v3", "seed": 1000 + i, "success": bool(o), "length": 10, "sum_reward": 0.0}
                for i, o in enumerate(outcomes)]
    (folder / "eval.json").write_text(json.dumps({"n_episodes": len(episodes), "episodes": episodes}))


def test_report_states_the_comparison_over_seeds(tmp_path):
    from vst_vla.report import write_report

    for seed in range(3):  # tuned: 8/10 per seed; control: 2/10 per seed
        _eval_json(tmp_path / f"eval_sim_s{seed}", [1] * 8 + [0] * 2)
        _eval_json(tmp_path / f"eval_sim_control_s{seed}", [1] * 2 + [0] * 8)
    summary = {"root": str(tmp_path), "wall_seconds": 1.0, "peak_rss_mb": 1.0, "stages": {},
               "backbone": {"name": "small", "family": "qwen2_5_vl", "source": "small"}}
    text = write_report(tmp_path, summary).read_text()
    result = text.split("## Result", 1)[1].split("##", 1)[0]
    assert "Backbone: `small` (qwen2_5_vl family, source `small`)." in result
    assert "The tuned arm beat the control by 60.0 points (80.0 % vs 20.0 %" in result
    assert "excludes zero" in result
    assert "| tuned (VST RL backbone) | 3 | 30 | 0.800 |" in text
    assert "| control (untuned backbone) | 3 | 30 | 0.200 |" in text
    assert "Difference (tuned - control): +0.600" in text
