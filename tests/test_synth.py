"""`vst-vla synth`: layout, determinism by seed (whatever the worker count), split by scene, readers, preview."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from kill_helpers import kill_after_progress, vst_vla

from spatial_tuning.readers import load_samples
from spatial_tuning.skills import select_skills
from spatial_tuning.synth import LetterBalancer, is_thought, run
from spatial_tuning.synth_journal import SceneJournal
from vst_vla.atomic import OutputDirError, is_complete
from vst_vla.cli import COMMANDS

# experiment=tiny generates the procedural skills (the MetaWorld ones: tests/test_manipulation_skills.py).
SKILLS = select_skills("procedural")
OVERRIDES = ["image_size=64", "counts_per_skill.train=3", "counts_per_skill.test=1", "thought_fraction=0.34"]


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory):
    """Two runs with the same seed, one in-process and one with two worker processes."""
    from hydra import compose, initialize_config_dir

    from vst_vla.paths import config_dir

    root = tmp_path_factory.mktemp("synth")
    outs = []
    for name, workers in (("a", 1), ("b", 2)):
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="synth"):
            cfg = compose("synth", [*OVERRIDES, f"output_dir={root / name}", f"num_workers={workers}",
                                    f"preview={name == 'a'}", "experiment=tiny"])
        run(cfg)
        outs.append(root / name)
    return outs


def test_synth_is_registered():
    assert COMMANDS["synth"].target == "spatial_tuning.synth:run"


def test_layout_and_same_seed_same_bytes(synth_dirs):
    a, b = synth_dirs
    assert is_complete(a) and is_complete(b)
    for rel in ("vst_p/train.parquet", "vst_p/test.parquet", "vst_r/train.parquet", "vst_r/test.parquet",
                "summary.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert "| depth_comparison |" in (a / "summary.md").read_text()


def test_outputs_load_through_the_reader_and_keep_the_contract(synth_dirs):
    out = synth_dirs[0]
    train = load_samples([out / "vst_p" / "train.parquet", out / "vst_r" / "train.parquet"])
    test = load_samples(out / "vst_p" / "test.parquet") + load_samples(out / "vst_r" / "test.parquet")
    assert len(train) == 3 * len(SKILLS) and len(test) == len(SKILLS)
    assert Counter(s.skill for s in train) == {name: 3 for name in SKILLS}
    assert not {s.meta_info["scene_id"] for s in train} & {s.meta_info["scene_id"] for s in test}
    for sample in load_samples(out / "vst_r"):
        assert "thought" in sample.type and re.fullmatch(r"<think>.+</think> .+", sample.answer, flags=re.DOTALL)
    for sample in train:
        meta = sample.meta_info
        assert {"skill", "mode", "answer", "scene_id"} <= set(meta)
        if meta["mode"] == "multiple_choice":
            assert sample.answer.endswith(meta["answer"]) and len(meta["options"]) >= 2
        if meta["mode"] == "numeric":
            assert "unit" in meta
        assert sample.pil_images()[0].size == (64, 64)
    # 3 per skill at a thought fraction of 0.34: exactly one thought sample per skill (the k=2 one).
    assert sum(s.think for s in train) == len(SKILLS)


def test_preview_shows_every_skill(synth_dirs):
    page = (synth_dirs[0] / "preview.html").read_text()
    assert page.count("<img") >= len(SKILLS)
    for name in SKILLS:
        assert f"<h2>{name} (" in page


def test_complete_output_is_reused_not_rewritten(synth_dirs, compose):
    out = synth_dirs[0]
    before = (out / "vst_p" / "train.parquet").stat().st_mtime_ns
    result = run(compose("synth", [*OVERRIDES, f"output_dir={out}", "experiment=tiny"]))
    assert result["reused"] and (out / "vst_p" / "train.parquet").stat().st_mtime_ns == before


def test_letter_balancer_and_thought_schedule():
    balancer = LetterBalancer(np.random.default_rng(0))
    counts = Counter(balancer.position("s", 4 if i % 3 else 3) for i in range(300))
    assert max(counts.values()) / 300 < 0.3
    assert sum(is_thought(k, 0.25) for k in range(100)) == 25


SMALL = ["image_size=32", "counts_per_skill.train=4", "counts_per_skill.test=2", "questions_per_scene=1",
         "skills=[depth_comparison,object_distance,camera_motion]", "experiment=tiny"]
PARQUETS = ("vst_p/train.parquet", "vst_p/test.parquet", "vst_r/train.parquet", "vst_r/test.parquet", "summary.json")


@pytest.mark.parametrize("overwrite", ["false", "true"])
def test_synth_into_a_foreign_folder_is_refused_and_loses_nothing(compose, tmp_path, overwrite):
    """The issue's reproduction: synth always passed overwrite=True, so a folder holding other files was deleted."""
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("keep\n")
    with pytest.raises(OutputDirError, match=r"x already exists and holds files vst-vla did not write \(sub/\); .*"
                                             r"overwrite=true only replaces a folder vst-vla created"):
        run(compose("synth", [*SMALL, f"output_dir={folder}", f"overwrite={overwrite}"]))
    assert (folder / "sub" / "f").read_text() == "keep\n" and sorted(p.name for p in folder.iterdir()) == ["sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_complete_output_of_other_settings_is_refused(synth_dirs, compose):
    out = synth_dirs[0]
    before = (out / "vst_p" / "train.parquet").read_bytes()
    with pytest.raises(OutputDirError, match=r"made with other settings \(counts_per_skill, image_size, "
                                             r"questions_per_scene, skills, thought_fraction differ\); pass overwrite=true"):
        run(compose("synth", [*SMALL, f"output_dir={out}"]))
    assert (out / "vst_p" / "train.parquet").read_bytes() == before


def test_interrupted_synth_resumes_to_the_same_bytes(compose, tmp_path, monkeypatch):
    record = SceneJournal.record
    calls = []

    def interrupted_after_three_scenes(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        record(self, *args, **kwargs)

    monkeypatch.setattr(SceneJournal, "record", interrupted_after_three_scenes)
    with pytest.raises(KeyboardInterrupt):
        run(compose("synth", [*SMALL, f"output_dir={tmp_path / 'resumed'}"]))
    assert [p.name for p in tmp_path.iterdir()] == [".resumed.partial"]
    assert len(list((tmp_path / ".resumed.partial" / "scenes" / "train").glob("*.json"))) == 3
    monkeypatch.setattr(SceneJournal, "record", record)
    run(compose("synth", [*SMALL, f"output_dir={tmp_path / 'resumed'}"]))
    run(compose("synth", [*SMALL, f"output_dir={tmp_path / 'uninterrupted'}"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed", "uninterrupted"]
    assert not (tmp_path / "resumed" / "scenes").exists()
    for rel in PARQUETS:
        assert (tmp_path / "resumed" / rel).read_bytes() == (tmp_path / "uninterrupted" / rel).read_bytes(), rel


@pytest.mark.slow
def test_synth_killed_at_a_random_point_then_rerun_gives_the_same_bytes(synth_dirs, tmp_path):
    out = tmp_path / "data"
    args = ["synth", *OVERRIDES, "experiment=tiny", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    journal = tmp_path / ".data.partial" / "scenes"

    def finished_scenes() -> int:  # train's, then test's
        return len(list(journal.glob("*/*.json")))

    killed_at = kill_after_progress(args, tmp_path, finished_scenes, np.random.default_rng(13), at_least=1,
                                    at_most=3)
    assert not out.exists() and finished_scenes() >= killed_at
    proc = vst_vla(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "synth train: resuming after" in proc.stdout
    for rel in PARQUETS:  # synth_dirs[0]: the same settings, uninterrupted, in this process
        assert (out / rel).read_bytes() == (synth_dirs[0] / rel).read_bytes(), rel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_manipulation_skills_are_written_and_read_back(compose, tmp_path):
    """The MetaWorld skills through the real synth run: rows in the release format, ground truth the reader accepts."""
    out = tmp_path / "m"
    run(compose("synth", ["image_size=32", "counts_per_skill.train=2", "counts_per_skill.test=1", "skills=metaworld",
                          "thought_fraction=0", f"output_dir={out}", "experiment=tiny"]))
    train = load_samples(out / "vst_p" / "train.parquet", on_bad_sample="error")
    assert Counter(s.skill for s in train) == {name: 2 for name in select_skills("metaworld")}
    assert all(s.meta_info["image_flipped"] and s.pil_images()[0].size == (32, 32) for s in train)
