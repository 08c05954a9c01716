"""Distributed SFT on CPU: two gloo DDP processes (torchrun) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from spatial_tuning.sft import FINAL_CHECKPOINT

WORKER = textwrap.dedent("""
    import json, os, sys
    from hydra import compose, initialize_config_dir
    from vst_vla.paths import config_dir
    from vst_vla.backbone import load_backbone
    from spatial_tuning.sft_toy import toy_spatial_samples
    from spatial_tuning.sft import train_sft

    out, per_device = sys.argv[1], sys.argv[2]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="sft"):
        cfg = compose(config_name="sft", overrides=[
            "experiment=tiny", "optim.max_steps=4", "optim.learning_rate=1e-3", "max_tokens_per_pack=512",
            "save_steps=null", f"output_dir={out}", "report_to=[]", "trainer.torch_threads=1",
            f"trainer.per_device_train_batch_size={per_device}"])
    model, processor = load_backbone({"source": "tiny", "device": "cpu"})
    metrics = train_sft(cfg, model, processor, toy_spatial_samples(32, seed=0), [], out_dir=out)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump(metrics["train_losses"], f)
""")


def _run(args: list[str], tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.timeout(400)
def test_two_gloo_processes_match_one_process(tmp_path, tiny_checkpoint_dir):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    # Same global batch: one process with 2 packs per step, or two processes with 1 pack each.
    _run([sys.executable, str(worker), str(tmp_path / "one"), "2"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
          str(tmp_path / "two"), "1"], tmp_path)
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(one) == len(two) == 4
    # Tolerance: float32 sums reduced in a different order (all-reduce over processes) differ by ~1e-6.
    assert two == pytest.approx(one, abs=1e-4)
    assert one[-1] < one[0]
    a = load_file(tmp_path / "one" / FINAL_CHECKPOINT / "model.safetensors")
    b = load_file(tmp_path / "two" / FINAL_CHECKPOINT / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
