"""The OPT plugin, through the core's public machinery only."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimum_blockprune import BlockPruneError, load_pruned
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.model.registry import adapters, get_adapter

IDS = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))


def tiny_opt(**overrides):
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=200,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        pad_token_id=1,
        **overrides,
    )
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(4.0)
    return model.eval()


def test_entry_point_registers_the_adapter():
    assert "opt" in adapters()
    assert get_adapter(tiny_opt()).name == "opt"


def test_cli_lists_the_plugin_adapter():
    cli = str(Path(sys.executable).with_name("optimum-cli"))
    proc = subprocess.run(
        [cli, "blockprune", "analyze", "--list-adapters"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert proc.returncode == 0 and "opt\topt" in proc.stdout


@pytest.mark.parametrize(
    "removed",
    [["layers.1"], ["layers.0.attn"], ["layers.2.mlp", "layers.3.attn"], ["layers.1.attn", "layers.1.mlp"]],
)
def test_pruned_equals_gated_and_reloads(removed, tmp_path):
    from optimum_blockprune.model.marker import layer_skips
    from optimum_blockprune.model.pruned_format import mark_branch_pruned

    model = tiny_opt()
    adapter = get_adapter(model)
    blocks = adapter.blocks(model, "mixed")
    names = [b.name for b in blocks]
    with torch.no_grad(), Gates(model, adapter, blocks) as gates:
        gates.values = removal_gates(len(blocks), [names.index(n) for n in removed])
        gated = model(IDS).logits
    pruned = copy.deepcopy(model)
    adapter.remove_blocks(pruned, removed)
    with torch.no_grad():
        physical = pruned(IDS).logits
    assert (physical - gated).abs().max() <= 1e-4
    pruned.save_pretrained(tmp_path)
    if layer_skips(pruned.config):
        mark_branch_pruned(tmp_path)
    reloaded = load_pruned(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, physical)
    cached = reloaded.generate(IDS[:1, :5], max_new_tokens=5, do_sample=False, pad_token_id=1)
    uncached = reloaded.generate(
        IDS[:1, :5], max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=1
    )
    assert torch.equal(cached, uncached)


def test_post_norm_opt_is_declined():
    with pytest.raises(BlockPruneError, match="no adapter supports"):
        get_adapter(tiny_opt(do_layer_norm_before=False))
