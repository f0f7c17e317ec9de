"""Gates: per-sample gradients from one batched backward pass, and zero gates == skipped layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from optimum_blockprune.data.calibration import build_calibration
from optimum_blockprune.energy.gradients import gate_gradients
from optimum_blockprune.energy.scoring import LossScorer, per_sample_loss
from optimum_blockprune.model.adapters.llama import LlamaAdapter
from optimum_blockprune.model.gates import Gates, removal_gates


@pytest.mark.parametrize("pack", [True, False])
def test_batched_per_sample_gradients_equal_batch_one(tokenizer, corpus, pack):
    model = tiny_model("llama", 5)
    adapter = LlamaAdapter()
    blocks = adapter.blocks(model)
    texts = [t * (1 + i % 3) for i, t in enumerate(corpus[:6])]  # different lengths: padding when unpacked
    data = build_calibration(tokenizer, texts, num_samples=6, seq_len=24, pack=pack)
    A_batched, loss_batched = gate_gradients(model, adapter, blocks, data, batch_size=6)
    A_single, loss_single = gate_gradients(model, adapter, blocks, data, batch_size=1)
    assert A_batched.shape == (6, 5)
    assert np.abs(A_batched).max() > 1e-3  # gradients are not trivially zero
    np.testing.assert_allclose(A_batched, A_single, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss_batched, loss_single, rtol=1e-5, atol=1e-6)


def test_gate_gradient_matches_finite_difference(tokenizer, corpus):
    model = tiny_model("llama", 4)
    adapter = LlamaAdapter()
    blocks = adapter.blocks(model)
    data = build_calibration(tokenizer, corpus, num_samples=2, seq_len=16)
    A, _ = gate_gradients(model, adapter, blocks, data, batch_size=2)
    eps = 1e-2
    with Gates(model, adapter, blocks) as gates, torch.no_grad():
        for k in range(len(blocks)):
            losses = []
            for sign in (1, -1):
                values = torch.ones(len(blocks), dtype=torch.float64)
                values[k] += sign * eps
                gates.values = values.float()
                logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
                losses.append(per_sample_loss(logits, data.input_ids, data.attention_mask).double())
            fd = ((losses[0] - losses[1]) / (2 * eps)).numpy()
            np.testing.assert_allclose(A[:, k], fd, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_zero_gates_equal_skipped_layers(tokenizer, corpus, model_type):
    model = tiny_model(model_type, 6)
    adapter = LlamaAdapter()
    blocks = adapter.blocks(model)
    data = build_calibration(tokenizer, corpus, num_samples=4, seq_len=20)
    scorer = LossScorer(model, adapter, data, batch_size=2)
    with Gates(model, adapter, blocks) as gates, torch.no_grad():
        gates.values = None
        dense = per_sample_loss(model(input_ids=data.input_ids).logits, data.input_ids, data.attention_mask)
        np.testing.assert_allclose(scorer.losses(), dense.numpy(), rtol=1e-5, atol=1e-5)
        for removed in ([1], [0, 4], [2, 3, 5]):
            gates.values = removal_gates(len(blocks), removed)
            gated = per_sample_loss(
                model(input_ids=data.input_ids).logits, data.input_ids, data.attention_mask
            )
            np.testing.assert_allclose(scorer.losses(removed), gated.numpy(), rtol=1e-5, atol=1e-5)
            assert not np.allclose(gated.numpy(), dense.numpy())  # the removal changes the loss


def test_scorer_base_prefix_cache_gives_same_losses(tokenizer, corpus):
    model = tiny_model("llama", 6)
    adapter = LlamaAdapter()
    data = build_calibration(tokenizer, corpus, num_samples=4, seq_len=20)
    fresh = LossScorer(model, adapter, data, batch_size=4)
    cached = LossScorer(model, adapter, data, batch_size=4)
    cached.set_base([3])
    np.testing.assert_allclose(cached.losses([1]), fresh.losses([1, 3]), rtol=1e-6, atol=1e-6)
    cached.set_base([1, 3])
    np.testing.assert_allclose(cached.losses([5]), fresh.losses([1, 3, 5]), rtol=1e-6, atol=1e-6)
    cached.set_base([])
    np.testing.assert_allclose(cached.losses(), fresh.losses(), rtol=1e-6, atol=1e-6)
