"""The summed SFT loss of several batches and the gradients it leaves (packing exactness tests)."""

from __future__ import annotations

from spatial_tuning.sft_trainer import causal_lm_loss


def summed_loss_and_grads(model, batches, num_items):
    """Run forward and backward on each batch (loss normalised by `num_items`, the supervised tokens of the whole
    step, as the Trainer does); returns the summed loss and a copy of every gradient, leaving them zeroed."""
    model.zero_grad()
    total = 0.0
    for batch in batches:
        batch = dict(batch)
        labels = batch.pop("labels")
        loss = causal_lm_loss(model(**batch), labels, num_items_in_batch=num_items)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return total, grads
