"""Sublayer and mixed granularity end to end: constraints hold, surgery matches, checkpoints reload."""

from __future__ import annotations

import pytest
import torch
from architectures import tiny_arch_model
from helpers import CAL, assert_user_error, run

from optimum_blockprune import BlockPruneError, load_pruned
from optimum_blockprune.blocks import overlapping_blocks, parse_block_name
from optimum_blockprune.config import BlockPruneConfig, parse_params, parse_remove
from optimum_blockprune.model.adapters.base import count_params
from optimum_blockprune.pruner import BlockPruner

IDS = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))


def _config(tmp_path, corpus, **kw) -> BlockPruneConfig:
    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(corpus))
    return BlockPruneConfig(calibration=str(text), num_samples=4, seq_len=16, batch_size=2, **kw)


def _kinds(names):
    return sorted(parse_block_name(n)[1] for n in names)


def test_per_kind_counts_hold_and_pruned_checkpoint_reloads(tmp_path, tokenizer, corpus):
    model = tiny_arch_model("qwen3_moe")
    pruner = BlockPruner.from_pretrained(model, tokenizer=tokenizer)
    config = _config(
        tmp_path, corpus, remove={"attn": 2, "moe": 1}, granularity="sublayer", energy="additive"
    )
    result = pruner.prune(config, tmp_path / "out")
    assert _kinds(result.removed) == ["attn", "attn", "moe"]
    reloaded = load_pruned(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, pruner.model(IDS).logits)
    assert count_params(reloaded) == result.report["parameters_after"] < result.report["parameters_before"]
    assert set(result.report["skipped_branches"]) | {f"layers.{i}" for i in result.report["deleted_layers"]}


def test_parameter_budget_holds_in_every_candidate(tmp_path, tokenizer, corpus):
    model = tiny_arch_model("llama")
    pruner = BlockPruner.from_pretrained(model, tokenizer=tokenizer)
    total = count_params(model)
    config = _config(tmp_path, corpus, param_ratio=0.1, granularity="sublayer", energy="secant", top_k=8)
    selection = pruner.select(config)
    params = {b.name: b.num_params for b in pruner.blocks("sublayer")}
    for round_ in selection.rounds:
        for candidate in round_["candidates"]:
            assert sum(params[n] for n in candidate["removed"]) >= round_["min_params"]
    assert sum(params[n] for n in selection.removed) >= 0.1 * total


def test_mixed_granularity_never_removes_a_layer_and_its_own_branch(tmp_path, tokenizer, corpus):
    model = tiny_arch_model("llama")
    pruner = BlockPruner.from_pretrained(model, tokenizer=tokenizer)
    blocks = pruner.blocks("mixed")
    pairs = overlapping_blocks(blocks)
    assert ("layers.0", "layers.0.attn") in pairs
    config = _config(tmp_path, corpus, remove=3, granularity="mixed", energy="secant", top_k=10)
    selection = pruner.select(config)
    for candidate in selection.rounds[-1]["candidates"]:
        assert not any(a in candidate["removed"] and b in candidate["removed"] for a, b in pairs)
        assert len(candidate["removed"]) == 3


def test_infeasible_budget_is_a_one_line_error(tmp_path, tokenizer, corpus):
    pruner = BlockPruner.from_pretrained(tiny_arch_model("llama"), tokenizer=tokenizer)
    config = _config(
        tmp_path, corpus, remove={"attn": 1}, param_ratio=0.5, granularity="sublayer", energy="additive"
    )
    with pytest.raises(BlockPruneError, match="min_params") as info:
        pruner.select(config)
    assert "\n" not in str(info.value)


def test_parsers_and_config_validation():
    assert parse_remove("6") == 6 and parse_remove("attn=2, mlp=3") == {"attn": 2, "mlp": 3}
    assert parse_params("100M") == 100_000_000 and parse_params("1.5b") == 1_500_000_000
    for bad in ("two", "attn=x"):
        with pytest.raises(BlockPruneError, match="--remove"):
            parse_remove(bad)
    with pytest.raises(BlockPruneError, match="parameter count"):
        parse_params("lots")
    with pytest.raises(BlockPruneError, match="unknown block kind"):
        BlockPruneConfig(remove={"ffn": 2})
    with pytest.raises(BlockPruneError, match="not both"):
        BlockPruneConfig(target_params=10, param_ratio=0.1)
    assert BlockPruneConfig(target_params=10).remove is None


def test_cli_sublayer_prune_with_kind_counts_and_budget_errors(tmp_path, tiny_model_dir):
    from conftest import CORPUS

    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(CORPUS))
    common = ["--model", str(tiny_model_dir), "--calibration", str(text), *CAL, "--energy", "additive"]
    out = tmp_path / "out"
    proc = run(
        "prune", *common, "--granularity", "sublayer", "--remove", "attn=2,mlp=1", "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert _kinds(proc.stdout.split("blocks: ")[1].split("\n")[0].split()) == ["attn", "attn", "mlp"]
    assert load_pruned(out) is not None
    bad = run(
        "prune",
        *common,
        "--granularity",
        "sublayer",
        "--target-params",
        "1K",
        "--output",
        str(tmp_path / "x"),
    )
    assert_user_error(bad, "min_params")
    assert not (tmp_path / "x").exists()
    listing = run("analyze", "--list-adapters").stdout
    assert {"llama", "gemma3", "gpt2", "moe", "nemotron_h", "generic"} <= {
        line.split("\t")[0] for line in listing.splitlines()
    }
