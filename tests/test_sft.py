"""The SFT stage: config, training on the tiny backbone, the final checkpoint, resume, optimiser groups, LoRA."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from spatial_tuning.sft import FINAL_CHECKPOINT, build_dataset, build_trainer, train_sft
from spatial_tuning.sft_toy import toy_spatial_samples
from spatial_tuning.sft_trainer import is_vision_param
from vst_vla.atomic import is_complete
from vst_vla.backbone import load_backbone


def _cfg(compose, out: Path, *overrides: str):
    return compose("sft", ["experiment=tiny", f"output_dir={out}", "report_to=[]", "optim.learning_rate=1e-3",
                           "max_tokens_per_pack=512", "trainer.torch_threads=1", *overrides])


def test_sft_config_composes(compose):
    paper = compose("sft")
    assert paper.packing is True and paper.data.train == [] and paper.resume == "auto"
    cfg = compose("sft", ["experiment=tiny"])
    assert cfg.model.source == "tiny" and cfg.trainer.device == "cpu"
    # The tiny deltas size the run for CPU; the stage's own defaults stay those of real models.
    assert cfg.optim.max_steps > 0 and cfg.optim.learning_rate > paper.optim.learning_rate


@pytest.mark.parametrize("packing", [True, False])
def test_sft_trains_and_writes_a_loadable_checkpoint(compose, tiny_backbone, tmp_path, packing):
    model, processor = tiny_backbone
    cfg = _cfg(compose, tmp_path, "optim.max_steps=4", "save_steps=null", f"packing={str(packing).lower()}")
    train, held_out = toy_spatial_samples(24, seed=0), toy_spatial_samples(4, seed=1)
    metrics = train_sft(cfg, copy.deepcopy(model), processor, train, held_out, out_dir=tmp_path)
    assert metrics["eval_loss_end"] < metrics["eval_loss_start"]
    assert len(metrics["train_losses"]) == 4 and (tmp_path / "sft_metrics.json").is_file()
    final = tmp_path / FINAL_CHECKPOINT
    assert Path(metrics["checkpoint"]) == final and is_complete(final)

    loaded, loaded_processor = load_backbone({"source": str(final), "device": "cpu"})
    question = held_out[0]
    text = loaded_processor.apply_chat_template(question.messages(include_answer=False), tokenize=False,
                                                add_generation_prompt=True)
    inputs = loaded_processor(text=[text], images=question.pil_images(), return_tensors="pt")
    out = loaded.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = loaded_processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert isinstance(answer, str) and out.shape[1] > inputs["input_ids"].shape[1]


class _Interrupt(Exception):
    pass


class _StopAt(TrainerCallback):
    """Interrupts training at the start of step `step + 1`, like a killed job (checkpoint-`step` was saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt


def test_resume_reaches_the_same_weights(compose, tiny_backbone, tmp_path):
    model, processor = tiny_backbone
    train = toy_spatial_samples(24, seed=2)
    steps = ["optim.max_steps=4", "save_steps=2"]
    full = train_sft(_cfg(compose, tmp_path / "full", *steps), copy.deepcopy(model), processor, train, [],
                     out_dir=tmp_path / "full")
    with pytest.raises(_Interrupt):
        train_sft(_cfg(compose, tmp_path / "cut", *steps), copy.deepcopy(model), processor, train, [],
                  out_dir=tmp_path / "cut", callbacks=[_StopAt(2)])
    assert (tmp_path / "cut" / "checkpoint-2").is_dir() and not (tmp_path / "cut" / FINAL_CHECKPOINT).exists()
    resumed = train_sft(_cfg(compose, tmp_path / "cut", *steps, "resume=true"), copy.deepcopy(model), processor,
                        train, [], out_dir=tmp_path / "cut")
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["train_losses"] == pytest.approx(full["train_losses"], abs=1e-6)
    a = load_file(tmp_path / "full" / FINAL_CHECKPOINT / "model.safetensors")
    b = load_file(tmp_path / "cut" / FINAL_CHECKPOINT / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)



def test_vision_learning_rate_and_freezing(compose, tiny_backbone, tmp_path):
    model, processor = tiny_backbone
    cfg = _cfg(compose, tmp_path, "optim.vision_learning_rate=1e-5", "freeze.projector=true")
    train = build_dataset(toy_spatial_samples(4), None, processor, True, 512)
    trainer = build_trainer(cfg, copy.deepcopy(model), processor, train, None, tmp_path)
    optimizer = trainer.create_optimizer()
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert all(lrs[id(p)] == 1e-5 for n, p in named.items() if is_vision_param(n) and p.requires_grad)
    assert all(lrs[id(p)] == 1e-3 for n, p in named.items() if not is_vision_param(n))
    assert not any(p.requires_grad for n, p in named.items() if ".visual.merger." in n)
    assert all(id(p) not in lrs for n, p in named.items() if not p.requires_grad)


def test_lora_trains_adapters_and_merges(compose, tiny_backbone, tmp_path):
    model, processor = tiny_backbone
    cfg = _cfg(compose, tmp_path, "lora.enabled=true", "lora.r=4", "freeze.vision_tower=true", "optim.max_steps=2",
               "save_steps=null")
    metrics = train_sft(cfg, copy.deepcopy(model), processor, toy_spatial_samples(8), [], out_dir=tmp_path)
    assert not any("lora_" in name for name in load_file(tmp_path / FINAL_CHECKPOINT / "model.safetensors"))
    merged, _ = load_backbone({"source": str(tmp_path / FINAL_CHECKPOINT), "device": "cpu"})
    saved, base = merged.state_dict(), model.state_dict()
    assert saved.keys() == base.keys()  # plain transformers weights: the adapters are merged in
    changed = [n for n in saved if not torch.equal(saved[n], base[n])]
    assert changed and all("language_model" in n or "merger" in n or n == "lm_head.weight" for n in changed)
    assert any(".self_attn.q_proj." in n for n in changed)
    assert not any(".visual.blocks." in n for n in changed)  # the frozen vision tower stays as it was
    assert len(metrics["train_losses"]) == 2


def test_run_reads_parquet_and_caches_token_counts(compose, tmp_path):
    from spatial_tuning.sft import run
    from spatial_tuning.vst_format import write_parquet

    write_parquet(toy_spatial_samples(12, seed=4), tmp_path / "data" / "train.parquet")
    write_parquet(toy_spatial_samples(4, seed=5), tmp_path / "data" / "test.parquet")
    cfg = _cfg(compose, tmp_path / "out", f"data.train=[{tmp_path / 'data' / 'train.parquet'}]",
               f"data.eval=[{tmp_path / 'data' / 'test.parquet'}]", f"data.token_count_cache={tmp_path / 'counts'}",
               "optim.max_steps=2", "save_steps=null", "model.device=cpu")
    metrics = run(cfg)
    assert len(list((tmp_path / "counts").glob("*.json"))) == 2  # one per data file
    assert metrics["checkpoint"] == str(tmp_path / "out" / FINAL_CHECKPOINT)
    assert {"eval_loss_start", "eval_loss_end", "eval_loss_ratio"} <= metrics.keys()


@pytest.mark.parametrize(("budget", "n_train"), [(["optim.max_steps=2", "save_steps=2"], 24),
                                                 (["optim.max_steps=-1", "save_steps=1", "max_tokens_per_pack=256"], 6)])
def test_rerunning_a_finished_run_leaves_its_checkpoint_unchanged(budget, n_train, compose, tiny_backbone, tmp_path):
    """A rerun of the same command (resume=auto) finds the last checkpoint at the budget: 2 steps in the middle
    of an epoch (where Trainer would take a third optimizer step), or one epoch. It reads the checkpoint back
    and writes the same final weights."""
    model, processor = tiny_backbone
    cfg = _cfg(compose, tmp_path, *budget)
    train, held_out = toy_spatial_samples(n_train, seed=0), toy_spatial_samples(2, seed=1)
    first = train_sft(cfg, copy.deepcopy(model), processor, train, held_out, out_dir=tmp_path)
    final = tmp_path / FINAL_CHECKPOINT / "model.safetensors"
    weights = load_file(final)
    again = train_sft(cfg, copy.deepcopy(model), processor, train, held_out, out_dir=tmp_path)
    steps = first["global_step"]
    assert steps >= 2 and again["resumed_from"].endswith(f"checkpoint-{steps}") and again["global_step"] == steps
    assert again["train_losses"] == first["train_losses"] and again["eval_loss_end"] == first["eval_loss_end"]
    rerun = load_file(final)
    assert rerun.keys() == weights.keys() and all(torch.equal(rerun[k], weights[k]) for k in weights)
