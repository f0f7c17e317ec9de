"""Surgery: the physically pruned model equals the gated one, saves, and reloads with stock transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model
from helpers import RELOAD

from optimum_blockprune.model.adapters.llama import LlamaAdapter
from optimum_blockprune.model.gates import Gates, removal_gates

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
REMOVALS = [[0], [2, 3], [1, 4, 5]]


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 300, (2, 12), generator=g)


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("removed", REMOVALS)
def test_pruned_logits_equal_gated_logits(model_type, removed):
    model = tiny_model(model_type, 6)
    adapter = LlamaAdapter()
    ids = _ids()
    with Gates(model, adapter, adapter.blocks(model)) as gates, torch.no_grad():
        gates.values = removal_gates(6, removed)
        gated = model(input_ids=ids).logits
    adapter.remove_layers(model, removed)
    assert model.config.num_hidden_layers == 6 - len(removed)
    assert len(adapter.decoder_layers(model)) == 6 - len(removed)
    with torch.no_grad():
        pruned = model(input_ids=ids).logits
    assert (pruned - gated).abs().max().item() <= 1e-4
    for new_idx, layer in enumerate(adapter.decoder_layers(model)):
        assert layer.self_attn.layer_idx == new_idx


@pytest.mark.parametrize("model_type", ARCHS)
def test_cached_generation_equals_uncached_after_pruning(model_type):
    model = tiny_model(model_type, 6)
    LlamaAdapter().remove_layers(model, [1, 4])
    ids = _ids(1)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_qwen3_layer_types_follow_kept_layers():
    model = tiny_model("qwen3", 6)
    before = list(model.config.layer_types)
    LlamaAdapter().remove_layers(model, [0, 3])
    assert model.config.layer_types == [before[i] for i in (1, 2, 4, 5)]


@pytest.mark.parametrize("model_type", ARCHS)
def test_saved_pruned_model_reloads_with_stock_transformers(tmp_path, model_type):
    model = tiny_model(model_type, 6)
    LlamaAdapter().remove_layers(model, [2, 5])
    model.save_pretrained(tmp_path)
    ids = _ids(2)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["layers"] == 4
    assert (torch.tensor(result["logits"]) - expected).abs().max().item() <= 1e-5
