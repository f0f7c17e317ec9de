"""The KL objective of the loss scorer (dense top-k cache) and scoring a subset of the samples."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from helpers import CAL, assert_user_error, run

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.scoring import LossScorer, per_sample_loss
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.pruner import BlockPruner

IDS = torch.randint(3, 300, (6, 14), generator=torch.Generator().manual_seed(1))
MASK = torch.ones_like(IDS)
MASK[4, 10:] = 0  # one padded sample: its padding is no position of the loss
DATA = CalibrationData(IDS, MASK)


def exact_kl(dense: torch.Tensor, pruned: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Full-vocabulary KL(dense || pruned) per position, averaged per sample over real targets."""
    logp, logq = dense[:, :-1].double().log_softmax(-1), pruned[:, :-1].double().log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    keep = (mask[:, 1:] * mask[:, :-1]).double()
    return ((kl * keep).sum(1) / keep.sum(1)).numpy()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", 4)


def test_kl_of_the_dense_model_is_zero(model):
    scorer = LossScorer(model, get_adapter(model), DATA, 4, objective="kl")
    assert np.abs(scorer.losses()).max() <= 1e-6


@pytest.mark.parametrize("removed", [["layers.1"], ["layers.0.attn", "layers.2.mlp"]])
def test_kl_over_the_whole_vocabulary_is_the_exact_kl_and_top_k_bounds_it(model, removed):
    adapter = get_adapter(model)
    vocab = model.config.vocab_size
    full = LossScorer(model, adapter, DATA, 4, objective="kl", top_k=vocab)
    top = LossScorer(model, adapter, DATA, 4, objective="kl", top_k=8)
    pruned = copy.deepcopy(model)
    adapter.remove_blocks(pruned, removed)
    with torch.no_grad():
        dense_logits = model(input_ids=IDS, attention_mask=MASK).logits
        pruned_logits = pruned(input_ids=IDS, attention_mask=MASK).logits
    expected = exact_kl(dense_logits, pruned_logits, MASK)
    np.testing.assert_allclose(full.losses(removed), expected, rtol=1e-4, atol=1e-6)
    assert (expected > 1e-3).all()  # a removal moves the distribution
    coarse = top.losses(removed)
    assert (coarse > 0).all() and (coarse <= expected + 1e-6).all()  # merging outcomes lowers a KL


def test_a_subset_of_samples_is_scored_alone_and_counted_at_its_share(model):
    adapter = get_adapter(model)
    for objective in ("ce", "kl"):
        whole = LossScorer(model, adapter, DATA, 4, objective=objective)
        part = LossScorer(model, adapter, DATA, 4, objective=objective)
        before = part.forward_equivalents
        sub = part.losses(["layers.2"], samples=[4, 1, 2])  # rows of both batches, padded sample 4
        # layers 3 runs (2 is removed) for half of the samples: 1 of 4 layers x 1/2
        assert part.forward_equivalents - before == pytest.approx(0.125)
        np.testing.assert_allclose(sub, whole.losses(["layers.2"])[[1, 2, 4]], rtol=1e-5, atol=1e-6)
        # the memo keeps them: the full set then computes only the other samples, same values
        np.testing.assert_allclose(
            part.losses(["layers.2"]), whole.losses(["layers.2"]), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(BlockPruneError, match="sample indices"):
        part.losses(samples=[6])


def test_cross_entropy_is_still_the_default(model):
    scorer = LossScorer(model, get_adapter(model), DATA, 4)
    with torch.no_grad():
        dense = per_sample_loss(model(input_ids=IDS, attention_mask=MASK).logits, IDS, MASK)
    np.testing.assert_allclose(scorer.losses(), dense.numpy(), rtol=1e-5, atol=1e-5)
    assert BlockPruneConfig(remove=1).objective == "ce"
    with pytest.raises(BlockPruneError, match="objective"):
        BlockPruneConfig(remove=1, objective="mse")
    with pytest.raises(BlockPruneError, match="unknown objective"):
        LossScorer(model, get_adapter(model), DATA, 4, objective="mse")


def test_prune_with_objective_kl_end_to_end(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    args = ["-m", str(tiny_model_dir), "-o", str(out), "--remove", "2", "--calibration", str(text_file), *CAL]
    proc = run("prune", *args, "--method", "sleb", "--objective", "kl")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "blockprune_report.json").read_text())
    assert report["config"]["objective"] == "kl"
    assert report["dense_loss"] == pytest.approx(0.0, abs=1e-6)  # KL of the dense model
    assert report["pruned_loss"] > 0
    proc = run("prune", *args, "--overwrite", "--energy", "fisher", "--objective", "kl")
    assert_user_error(proc, "--objective kl needs an energy measured on real loss")


def test_the_default_energy_method_minimises_kl(tiny_model_dir, text_file):
    pruner = BlockPruner.from_pretrained(tiny_model_dir)
    config = BlockPruneConfig(
        remove=2, objective="kl", calibration=str(text_file), num_samples=4, seq_len=16, batch_size=2
    )
    selection = pruner.select(config)
    assert selection.dense_loss == pytest.approx(0.0, abs=1e-6)
    candidates = selection.rounds[-1]["candidates"]
    losses = [c["loss"] for c in candidates]
    kl = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 2, objective="kl")
    assert losses == pytest.approx([kl.loss(c["removed"]) for c in candidates], rel=1e-5, abs=1e-7)
    search = selection.cost["search"]  # from the best reranked candidate, on the same KL
    assert search["start_loss"] == pytest.approx(min(losses), rel=1e-5)
    assert selection.pruned_loss == pytest.approx(search["loss"], rel=1e-5)
    assert search["loss"] <= min(losses)
    assert selection.pruned_loss == pytest.approx(kl.loss(selection.removed), rel=1e-5)


def test_analyze_measures_the_energy_on_kl(tiny_model_dir, text_file):
    pruner = BlockPruner.from_pretrained(tiny_model_dir)
    config = BlockPruneConfig(
        remove=1, objective="kl", energy="additive", calibration=str(text_file), num_samples=4, seq_len=16
    )
    energy = pruner.analyze(config)
    kl = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 8, objective="kl")
    expected = [kl.loss([b.name]) for b in pruner.blocks("layer")]  # the dense KL is 0
    np.testing.assert_allclose(energy.fields, expected, rtol=1e-4, atol=1e-6)
