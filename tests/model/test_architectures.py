"""Every supported architecture: gated removal == physical removal, exact save/load, cached decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from architectures import ARCHITECTURES, gated_and_pruned, save_pruned_model, tiny_arch_model

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.marker import layer_skips
from optimum_blockprune.model.pruned_format import load_pruned
from optimum_blockprune.model.registry import get_adapter

IDS = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))


def removal_sets(model, adapter, blocks, rng, count=2):
    """Random sets of 1-3 blocks of every kind, never a layer together with one of its branches,
    none the adapter refuses."""
    names = [b.name for b in blocks]
    kinds = sorted({b.kind for b in blocks})
    allowed = [n for n in names if adapter.removal_error(model, [n]) is None]
    sets = [[next(n for n in allowed if parse_block_name(n)[1] == kind)] for kind in kinds]
    while len(sets) < len(kinds) + count:
        pick = list(rng.choice(names, size=int(rng.integers(1, 4)), replace=False))
        layers = [parse_block_name(n) for n in pick]
        whole = {i for i, k in layers if k == "layer"}
        if (
            not any(i in whole and k != "layer" for i, k in layers)
            and adapter.removal_error(model, pick) is None
        ):
            sets.append(sorted(pick))
    return sets


def greedy(model, cache: bool):
    return model.generate(
        IDS[:1, :6], max_new_tokens=6, do_sample=False, use_cache=cache, pad_token_id=0, eos_token_id=None
    )


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_pruned_equals_gated_and_round_trips(model_type, tmp_path):
    model = tiny_arch_model(model_type)
    adapter = get_adapter(model)
    assert adapter.name == ARCHITECTURES[model_type][0]
    blocks = adapter.blocks(model, "mixed")
    rng = np.random.default_rng(0)
    for r, removed in enumerate(removal_sets(model, adapter, blocks, rng)):
        _, pruned, physical = gated_and_pruned(model, blocks, removed, IDS)
        folder = tmp_path / f"pruned{r}"
        save_pruned_model(pruned, folder)
        reloaded = load_pruned(folder).eval()
        assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in pruned.parameters())
        with torch.no_grad():
            assert torch.equal(reloaded(IDS).logits, physical), removed
        assert torch.equal(greedy(reloaded, cache=True), greedy(reloaded, cache=False)), removed


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma3_text", "gpt2"])
def test_incremental_decoding_when_first_attention_is_removed(model_type):
    """The layer that sizes the cache has no attention: a prefill + one-token step with the cache
    must still give the full forward's logits."""
    model = tiny_arch_model(model_type)
    adapter = get_adapter(model)
    adapter.remove_blocks(model, ["layers.0.attn", "layers.2.mlp"])
    with torch.no_grad():
        full = model(IDS[:, :8]).logits[:, -1]
        prefill = model(IDS[:, :7], use_cache=True)
        step = model(IDS[:, 7:8], cache=prefill.cache, use_cache=True).logits[:, -1]
    assert (step - full).abs().max() <= 1e-4


def test_plain_transformers_refuses_branch_pruned_checkpoints_loudly(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_arch_model("llama")
    get_adapter(model).remove_blocks(model, ["layers.1.attn"])
    save_pruned_model(model, tmp_path / "branch")
    config = json.loads((tmp_path / "branch" / "config.json").read_text())
    assert config["model_type"] == "blockpruned_llama" and config["per_layer_config"] == {
        "1": {"skip": ["attention"]}
    }
    with pytest.raises(ValueError, match="blockpruned_llama"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "branch")


def test_whole_layer_removal_loads_with_stock_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_arch_model("gemma3_text")
    get_adapter(model).remove_blocks(model, ["layers.1", "layers.2.attn", "layers.2.mlp"])
    assert model.config.num_hidden_layers == 2 and not layer_skips(model.config)
    save_pruned_model(model, tmp_path / "layers")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "layers").eval()
    with torch.no_grad():
        assert torch.equal(plain(IDS).logits, model(IDS).logits)


def test_branch_removal_frees_parameters_and_is_recorded():
    model = tiny_arch_model("qwen3_moe")
    adapter = get_adapter(model)
    before = sum(p.numel() for p in model.parameters())
    blocks = {b.name: b for b in adapter.blocks(model, "sublayer")}
    assert [n for n in blocks if n.endswith(("mlp", "moe"))] == [
        f"layers.{i}.{k}" for i, k in enumerate(["mlp", "moe"] * 2)
    ]
    summary = adapter.remove_blocks(model, ["layers.1.moe", "layers.0.attn"])
    assert summary == {"deleted_layers": [], "skipped": [[0, "attn"], [1, "moe"]]}
    freed = blocks["layers.1.moe"].num_params + blocks["layers.0.attn"].num_params
    assert sum(p.numel() for p in model.parameters()) == before - freed
    assert layer_skips(model.config) == {0: ["attention"], 1: ["mlp"]}
    assert [b.name for b in adapter.blocks(model, "sublayer")][:3] == [
        "layers.0.mlp",
        "layers.1.attn",
        "layers.2.attn",
    ]


def test_moe_sparse_step_survives_renumbering(tmp_path):
    """Deleting layer 0 shifts every index: the dense / sparse pattern must be written out."""
    model = tiny_arch_model("qwen3_moe")
    adapter = get_adapter(model)
    adapter.remove_blocks(model, ["layers.0"])
    assert model.config.decoder_sparse_step == 1 and model.config.mlp_only_layers == [1]
    save_pruned_model(model, tmp_path)
    reloaded = load_pruned(tmp_path).eval()
    assert [b.kind for b in adapter.blocks(reloaded, "sublayer")] == [
        "attn",
        "moe",
        "attn",
        "mlp",
        "attn",
        "moe",
    ]
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


def test_removing_every_branch_of_a_layer_deletes_it():
    model = tiny_arch_model("llama")
    summary = get_adapter(model).remove_blocks(model, ["layers.2.attn", "layers.2.mlp"])
    assert summary["deleted_layers"] == [2] and model.config.num_hidden_layers == 3


def test_remove_blocks_rejects_missing_branches_and_attention_free_hybrids():
    model = tiny_arch_model("nemotron_h")
    adapter = get_adapter(model)
    with pytest.raises(BlockPruneError, match="has no 'attn' branch"):
        adapter.remove_blocks(model, ["layers.0.attn"])
    with pytest.raises(BlockPruneError, match="every attention layer"):
        adapter.remove_blocks(model, ["layers.2.attn", "layers.5.attn"])
    with pytest.raises(
        BlockPruneError, match=r"layers.1 \(moe, no cache\) would put it first.*protect layers.0"
    ):
        adapter.remove_blocks(model, ["layers.0.mamba"])
    with pytest.raises(BlockPruneError, match="protect layers.0"):  # refused sets stay refused when they grow
        adapter.remove_blocks(model, ["layers.0", "layers.1"])
    assert model.config.num_hidden_layers == 6
    adapter.remove_blocks(model, ["layers.1.moe", "layers.3"])  # layer 0 keeps leading: allowed
    with torch.no_grad():
        full = model(IDS).logits
        prefill = model(IDS[:, :9], use_cache=True)
        step = model(IDS[:, 9:], cache=prefill.cache, use_cache=True).logits
    assert (step[:, -1] - full[:, -1]).abs().max() <= 1e-4


@pytest.mark.xfail(raises=AttributeError, strict=True)
def test_upstream_nemotron_h_without_a_leading_cache_layer_cannot_run_with_a_cache():
    """Pins the transformers bug behind the Nemotron-H rule "no cache-less layer first": a STOCK
    config whose first layer is MoE fails every cached forward ('DummyLayer' object has no
    attribute 'get_seq_length', transformers >= 5.25). When this starts to pass, upstream fixed it:
    drop the rule in ``NemotronHAdapter.removal_error`` and this test."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(
        ARCHITECTURES["nemotron_h"][1], layers_block_type=["moe", "full_attention", "linear_attention"]
    )
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("nemotron_h", **kwargs)).eval()
    with torch.no_grad():
        model(IDS, use_cache=True)


def test_generic_adapter_refuses_layers_it_cannot_read():
    """OLMo-2 normalises each branch AFTER it: gating the attention child does not scale what
    joins the residual stream, so the fallback must refuse rather than guess."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("olmo2", **ARCHITECTURES["llama"][1])
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # trained-size branch outputs: at init RMSNorm is near linear on them
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    with pytest.raises(BlockPruneError) as info:
        get_adapter(model)
    assert "\n" not in str(info.value) and "not a plain residual addend" in str(info.value)


def test_gpt2_with_index_scaled_attention_refuses_layer_deletion():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(
        GPT2Config(**ARCHITECTURES["gpt2"][1], scale_attn_by_inverse_layer_idx=True)
    )
    adapter = get_adapter(model)
    with pytest.raises(BlockPruneError, match="sublayer"):
        adapter.remove_blocks(model, ["layers.1"])
    adapter.remove_blocks(model, ["layers.1.mlp"])  # single branches keep every index
    assert model.config.n_layer == 4
