"""`sdpa_varlen`: packed SFT without flash-attn gives the loss and gradients of the samples run one by one."""

from __future__ import annotations

import copy

import pytest
import torch
from loss_helpers import summed_loss_and_grads

from spatial_tuning.packed_attention import (
    VARLEN_ATTENTION,
    packs_in_one_row,
    sample_boundaries,
    use_varlen_attention,
)
from spatial_tuning.packing import MropePositions, PackedCollator, SFTDataset
from spatial_tuning.sft_tokenize import IGNORE_INDEX
from spatial_tuning.sft_toy import toy_spatial_samples


def test_sample_boundaries_follow_position_restarts():
    # Samples of 3, 2 and 4 tokens: positions restart at 0 at offsets 3 and 5.
    assert sample_boundaries(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])) == [0, 3, 5, 9]
    assert sample_boundaries(torch.arange(5)) == [0, 5]


def test_varlen_packed_loss_and_gradients_equal_unpacked(tiny_backbone):
    model, processor = tiny_backbone
    encoded = [item[0] for item in SFTDataset(toy_spatial_samples(4, seed=3, thought_fraction=0.5), processor)]
    num_items = sum(int((e["labels"][1:] != IGNORE_INDEX).sum()) for e in encoded)
    collate = PackedCollator(MropePositions(model))
    plain = copy.deepcopy(model).train()  # stock sdpa
    single_loss, single_grads = summed_loss_and_grads(plain, [collate([[e]]) for e in encoded], num_items)

    varlen = copy.deepcopy(model).train()
    assert use_varlen_attention(varlen) == VARLEN_ATTENTION and packs_in_one_row(VARLEN_ATTENTION)
    assert varlen.config.text_config._attn_implementation == VARLEN_ATTENTION
    assert varlen.config.vision_config._attn_implementation == "sdpa"
    assert use_varlen_attention(varlen) == VARLEN_ATTENTION  # idempotent
    packed = collate([encoded[:2], encoded[2:]])  # one row holding all four samples
    assert packed["input_ids"].shape[0] == 1
    packed_loss, packed_grads = summed_loss_and_grads(varlen, [packed], num_items)

    # Independent reference: plain torch cross-entropy per sample, summed, over all supervised tokens.
    with torch.no_grad():
        reference = sum(torch.nn.functional.cross_entropy(
            plain(**{k: v for k, v in b.items() if k != "labels"}).logits[0, :-1], b["labels"][0, 1:],
            reduction="sum").item() for b in (collate([[e]]) for e in encoded)) / num_items
    assert single_loss == pytest.approx(reference, abs=1e-4)
    assert packed_loss == pytest.approx(reference, abs=1e-4)
    assert packed_grads.keys() == single_grads.keys() and len(packed_grads) > 10
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, single_grads[name], atol=1e-5, rtol=1e-4, msg=name)

    # Without the restarts (positions running on through the row) attention crosses samples and the logits of
    # the later samples move far more than the packed ones differ from single runs: the equality above comes
    # from the per-sample split, not from a model that ignores its context.
    run_on = {k: v for k, v in packed.items() if k != "labels"}
    run_on["position_ids"] = torch.cat([torch.arange(packed["input_ids"].shape[1]).expand(1, 1, -1),
                                        packed["position_ids"][1:]], dim=0)
    with torch.no_grad():
        packed_logits = varlen(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        single_logits = torch.cat([plain(**{k: v for k, v in collate([[e]]).items() if k != "labels"}).logits[0]
                                   for e in encoded])
        crossed_logits = varlen(**run_on).logits[0]
    packed_error = (packed_logits - single_logits).abs().max().item()
    assert packed_error < 1e-4
    assert (crossed_logits - single_logits).abs().max().item() > 100 * max(packed_error, 1e-6)


def test_varlen_leaves_generation_and_flash_alone(tiny_backbone):
    model, processor = tiny_backbone
    varlen = copy.deepcopy(model).eval()
    use_varlen_attention(varlen)
    tokenizer = copy.deepcopy(processor.tokenizer)  # the fixture is shared: pad on the left on a copy
    tokenizer.padding_side = "left"
    # A left-padded batch: the padding mask must still reach attention (a dropped mask changes the short row).
    prompt = tokenizer(["where is the red block?", "pick up the green cup next to the plate on the left"],
                       return_tensors="pt", padding=True)
    assert not prompt["attention_mask"].all()
    with torch.no_grad():
        expected = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        got = varlen.generate(**prompt, max_new_tokens=4, do_sample=False)
        logits = varlen(**prompt).logits
        reference = model(**prompt).logits
    assert torch.equal(expected, got)
    real = prompt["attention_mask"].bool()
    torch.testing.assert_close(logits[real], reference[real], atol=1e-5, rtol=1e-5)
    assert not packs_in_one_row("sdpa") and packs_in_one_row("flash_attention_2")
