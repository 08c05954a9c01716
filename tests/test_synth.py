"""`vst-vla synth`: layout, determinism by seed (whatever the worker count), split by scene, readers, preview."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from spatial_tuning.readers import load_samples
from spatial_tuning.skills import SKILLS
from spatial_tuning.synth import LetterBalancer, is_thought, run
from vst_vla.atomic import is_complete
from vst_vla.cli import COMMANDS

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
            assert sample.answer.endswith(meta["answer"]) and len(meta["options"]) >= 3
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
    result = run(compose("synth", [*OVERRIDES, f"output_dir={out}"]))
    assert result["reused"] and (out / "vst_p" / "train.parquet").stat().st_mtime_ns == before


def test_letter_balancer_and_thought_schedule():
    balancer = LetterBalancer(np.random.default_rng(0))
    counts = Counter(balancer.position("s", 4 if i % 3 else 3) for i in range(300))
    assert max(counts.values()) / 300 < 0.3
    assert sum(is_thought(k, 0.25) for k in range(100)) == 25
