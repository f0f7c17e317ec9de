"""BlockPruner end to end on a tiny model: analyze, solve, select with rerank, prune and save."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model

from optimum_blockprune import BlockPruneError
from optimum_blockprune.blocks import Block
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.pruner import BlockPruner
from optimum_blockprune.selection.energy import round_targets


def _config(tmp_path, corpus, **kw) -> BlockPruneConfig:
    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(corpus))
    return BlockPruneConfig(calibration=str(text), num_samples=4, seq_len=16, batch_size=2, **kw)


@pytest.mark.parametrize("energy", ["fisher", "taylor", "additive", "secant", "recentred"])
def test_select_returns_valid_configuration_and_best_reranked(tmp_path, tokenizer, corpus, energy):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 6), tokenizer=tokenizer)
    config = _config(tmp_path, corpus, remove=3, energy=energy, top_k=5, protect=["layers.0"])
    selection = pruner.select(config)
    assert len(selection.removed) == 3 and "layers.0" not in selection.removed
    last = selection.rounds[-1]
    losses = [c["loss"] for c in last["candidates"]]
    assert last["candidates"][last["chosen"]]["loss"] == min(losses)
    search = selection.cost["search"]  # the swap search starts from the best reranked candidate
    assert search["start_loss"] == pytest.approx(min(losses))
    assert selection.pruned_loss == pytest.approx(search["loss"]) and search["loss"] <= min(losses)
    assert selection.cost["forward_equivalents"] > 0


def test_recentred_rounds_fix_earlier_choices():
    blocks = [Block(i, "layer", 100) for i in range(10)]
    assert round_targets(6, None, [], blocks, "recentred") == [(2, None), (4, None), (6, None)]
    assert round_targets(5, None, [], blocks, "recentred") == [(2, None), (4, None), (5, None)]
    assert round_targets(5, None, [], blocks, "fisher") == [(5, None)]
    with pytest.raises(BlockPruneError):
        round_targets(2, None, blocks[:2], blocks, "recentred")


def test_recentred_rounds_scale_kind_counts_and_budgets():
    blocks = [Block(i, k, 100 if k == "attn" else 300) for i in range(10) for k in ("attn", "mlp")]
    rounds = round_targets({"attn": 3, "mlp": 2}, 900, [blocks[0]], blocks, "recentred")
    assert rounds == [({"attn": 2, "mlp": 1}, 450), ({"attn": 3, "mlp": 2}, 900)]
    # a budget alone: about RECENTRE_STEP average blocks per round, the last round at the full budget
    rounds = round_targets(None, 1200, [], blocks, "recentred")
    assert [r[0] for r in rounds] == [None, None, None] and rounds[-1][1] == 1200


def test_analyze_energy_fields_are_real_single_removal_losses(tmp_path, tokenizer, corpus):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 5), tokenizer=tokenizer)
    config = _config(tmp_path, corpus, remove=1, energy="additive")
    energy = pruner.analyze(config)
    data = pruner.calibration(config)
    from optimum_blockprune.energy.scoring import per_sample_loss

    with Gates(pruner.model, pruner.adapter, pruner.blocks()) as gates, torch.no_grad():

        def loss(removed):
            gates.values = removal_gates(5, removed) if removed else None
            logits = pruner.model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
            return per_sample_loss(logits, data.input_ids, data.attention_mask).double().mean().item()

        dense = loss([])
        for i in range(5):
            assert energy.fields[i] == pytest.approx(loss([i]) - dense, abs=1e-5)


def test_prune_saves_a_folder_that_reloads_with_equal_logits(tmp_path, tokenizer, corpus):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", 6)
    reference = tiny_model("llama", 6)
    pruner = BlockPruner.from_pretrained(model, tokenizer=tokenizer)
    config = _config(tmp_path, corpus, remove=2, energy="additive")
    out = tmp_path / "pruned"
    result = pruner.prune(config, out)
    written = {p.name for p in out.iterdir()}
    assert {
        "blockprune_config.json",
        "blockprune_report.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    } <= written
    report = json.loads((out / "blockprune_report.json").read_text())
    assert report["removed"] == result.removed and len(result.removed) == 2
    saved = BlockPruneConfig.from_pretrained(out)
    assert saved.removed_blocks == result.removed
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    removed = [int(n.split(".")[1]) for n in result.removed]
    ids = torch.randint(4, 300, (2, 10))
    with Gates(reference, pruner.adapter, pruner.adapter.blocks(reference)) as gates, torch.no_grad():
        gates.values = removal_gates(6, removed)
        gated = reference(input_ids=ids).logits
        assert (reloaded(input_ids=ids).logits - gated).abs().max().item() <= 1e-4
    assert np.isfinite(report["pruned_loss"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folders left


def test_prune_refuses_non_empty_output_and_writes_nothing(tmp_path, tokenizer, corpus):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 4), tokenizer=tokenizer)
    with pytest.raises(BlockPruneError, match="not empty"):
        pruner.prune(_config(tmp_path, corpus, remove=1, energy="additive"), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert len(pruner.adapter.decoder_layers(pruner.model)) == 4


def test_bad_requests(tmp_path, tokenizer, corpus):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 4), tokenizer=tokenizer)
    for m in (4, 9):
        with pytest.raises(BlockPruneError, match="choose between 1 and 3"):
            pruner.select(_config(tmp_path, corpus, remove=m))
    with pytest.raises(BlockPruneError, match="unknown block"):
        pruner.select(_config(tmp_path, corpus, remove=1, protect=["layers.7"]))
    with pytest.raises(BlockPruneError):
        BlockPruneConfig(remove=0)


def test_select_takes_token_batches_without_a_tokenizer():
    """``select(calibration=...)``: random token batches stand in for calibration text (no tokenizer)."""
    from optimum_blockprune.data.calibration import CalibrationData
    from optimum_blockprune.energy.scoring import LossScorer
    from optimum_blockprune.model.registry import get_adapter

    model = tiny_model(layers=6)
    adapter = get_adapter(model)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    data = CalibrationData(ids, torch.ones_like(ids), {"source": "random tokens"})
    pruner = BlockPruner(model, None, adapter, "tiny")
    selection = pruner.select(BlockPruneConfig(remove=2, num_samples=4, seq_len=16), calibration=data)
    scorer = LossScorer(model, adapter, data)
    assert len(selection.removed) == 2
    assert selection.dense_loss == pytest.approx(scorer.loss(), abs=1e-6)
    assert selection.pruned_loss == pytest.approx(scorer.loss(selection.removed), abs=1e-6)


def test_recentred_rounds_reach_targets_deeper_than_the_pool():
    """More blocks than a round's pool of candidates (RECENTRE_POOL): later rounds refill it from the
    blocks left out before, instead of running out of candidates."""
    from optimum_blockprune.data.calibration import CalibrationData
    from optimum_blockprune.model.registry import get_adapter
    from optimum_blockprune.selection.energy import RECENTRE_POOL

    layers = RECENTRE_POOL + 4
    model = tiny_model(layers=layers)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    data = CalibrationData(ids, torch.ones_like(ids), {"source": "random tokens"})
    pruner = BlockPruner(model, None, get_adapter(model), "tiny")
    config = BlockPruneConfig(remove=layers - 2, num_samples=4, seq_len=16, energy="recentred")
    selection = pruner.select(config, calibration=data)
    assert len(set(selection.removed)) == layers - 2
