"""The SFT loss without full logits (`loss.impl=chunked`): the plain path's loss and gradients on packed rows with
masked labels, the `auto` choice per device, and a `vst-vla sft` run that trains the same as the plain one."""

from __future__ import annotations

import copy

import pytest
import torch

from spatial_tuning.packing import MropePositions, PackedCollator, SFTDataset
from spatial_tuning.sft import train_sft
from spatial_tuning.sft_loss import (
    chunked_linear_cross_entropy,
    resolve_loss_impl,
    shifted_targets,
    use_linear_cross_entropy,
)
from spatial_tuning.sft_tokenize import IGNORE_INDEX
from spatial_tuning.sft_toy import toy_spatial_samples
from spatial_tuning.sft_trainer import causal_lm_loss


def _loss_and_grads(model, batch: dict, num_items, plain: bool):
    batch = dict(batch)
    model.zero_grad()
    if plain:
        labels = batch.pop("labels")
        loss = causal_lm_loss(model(**batch), labels, num_items_in_batch=num_items)
    else:
        out = model(**batch, num_items_in_batch=num_items)
        assert out.logits is None  # the full logits were never built
        loss = out.loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("one_row", [True, False])
def test_chunked_loss_and_gradients_equal_the_plain_path(one_row, tiny_backbone):
    model, processor = tiny_backbone
    plain = copy.deepcopy(model).train()
    chunked = copy.deepcopy(model).train()
    use_linear_cross_entropy(chunked, "chunked", chunk_tokens=7)  # several chunks, the last one short
    encoded = [item[0] for item in SFTDataset(toy_spatial_samples(5, seed=3, thought_fraction=0.5), processor)]
    collate = PackedCollator(MropePositions(plain), processor.tokenizer.pad_token_id, one_row=one_row)
    batch = collate([encoded]) if one_row else collate([encoded[:2], encoded[2:]])
    supervised = int((shifted_targets(batch["labels"]) != IGNORE_INDEX).sum())
    assert 7 < supervised < batch["labels"].numel() / 2  # label masking: prompts and images are not trained
    for num_items in (supervised + 5, None):  # the Trainer's step-wide count, or the batch's own mean
        expected, expected_grads = _loss_and_grads(plain, batch, num_items, plain=True)
        got, grads = _loss_and_grads(chunked, batch, num_items, plain=False)
        assert got == pytest.approx(expected, rel=1e-5)
        assert grads.keys() == expected_grads.keys() and len(grads) > 10
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_chunked_cross_entropy_by_hand():
    # Two positions supervised, one ignored. Logits: row 0 = [0, 0] -> CE = log 2 for either class;
    # row 2 = [2, 0] against class 1 -> CE = log(e^2 + 1) - 0 = 2.1269.
    hidden = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, IGNORE_INDEX, 1])
    loss = chunked_linear_cross_entropy(hidden, weight, targets, chunk_tokens=1)
    assert loss.item() == pytest.approx(0.693147 + 2.126928, abs=1e-5)
    loss.backward()
    assert hidden.grad[1].abs().sum() == 0  # an ignored position gets no gradient


def test_loss_impl_resolves_per_device():
    assert resolve_loss_impl("auto", "cpu") == "plain"
    assert resolve_loss_impl("chunked", "cpu") == "chunked"
    with pytest.raises(ValueError, match="loss.impl=liger: the model is not on CUDA; use loss.impl=chunked"):
        resolve_loss_impl("liger", "cpu")
    with pytest.raises(ValueError, match="loss.impl='fused' is not one of auto, plain, chunked, liger"):
        resolve_loss_impl("fused", "cpu")


def test_sft_run_with_chunked_loss_trains_as_the_plain_one(compose, tiny_backbone, tmp_path):
    """Two packs of different sizes per optimiser step: the loss is normalised over the whole step in both."""
    model, processor = tiny_backbone
    train, held_out = toy_spatial_samples(12, seed=0), toy_spatial_samples(3, seed=1)
    losses = {}
    for impl in ("plain", "chunked"):
        cfg = compose("sft", ["experiment=tiny", f"output_dir={tmp_path / impl}", "report_to=[]", "save_steps=null",
                              "optim.learning_rate=1e-3", "max_tokens_per_pack=512", "optim.max_steps=3",
                              "trainer.torch_threads=1", "trainer.gradient_accumulation_steps=2", f"loss.impl={impl}", "loss.chunk_tokens=16"])
        torch.manual_seed(0)
        metrics = train_sft(cfg, copy.deepcopy(model), processor, train, held_out, out_dir=tmp_path / impl)
        losses[impl] = [*metrics["train_losses"], metrics["eval_loss_start"], metrics["eval_loss_end"]]
    assert len(losses["plain"]) == 5
    assert losses["chunked"] == pytest.approx(losses["plain"], rel=1e-4)
