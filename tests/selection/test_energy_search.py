"""The energy method's swap search on a real (tiny) model: what it returns has no improving single
swap on a fresh loss scorer, it never does worse than the reranked candidate, it honours the
request's constraints and budget, and the CLI and the report show it."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_model
from helpers import CAL, assert_user_error, run

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.model.adapters.base import count_params
from optimum_blockprune.pruner import BlockPruner
from optimum_blockprune.selection.local_search import swap_space
from optimum_blockprune.selection.rules import Rules
from optimum_blockprune.selection.swap_search import apply


def _config(tmp_path, corpus, **kw) -> BlockPruneConfig:
    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(corpus))
    return BlockPruneConfig(calibration=str(text), num_samples=4, seq_len=16, batch_size=2, **kw)


@pytest.mark.parametrize(
    ("granularity", "settings"),
    [
        ("layer", {"remove": 3, "protect": ["layers.0"]}),
        ("mixed", {"remove": {"layer": 1, "mlp": 2}, "force": ["layers.5.mlp"]}),
        ("sublayer", {"param_ratio": 0.3}),
    ],
)
def test_no_single_swap_improves_the_result(tmp_path, tokenizer, corpus, granularity, settings):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 6), tokenizer=tokenizer)
    config = _config(tmp_path, corpus, granularity=granularity, search="certify", **settings)
    selection = pruner.select(config)
    certificate = selection.cost["search"]["certificate"]
    assert certificate["local_optimum"] and certificate["settled"] == certificate["swaps"] > 0

    blocks = pruner.blocks(granularity)
    names = [b.name for b in blocks]
    rules = Rules(pruner.model, pruner.adapter, blocks, config.protect or (), config.force or ())
    remove, min_params = config.removal_target(blocks, count_params(pruner.model))
    space = swap_space(blocks, rules, isinstance(remove, dict), min_params, None)
    result = tuple(sorted(names.index(n) for n in selection.removed))
    assert space.valid(result) and set(rules.force) <= set(result) and not set(rules.protect) & set(result)
    fresh = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 2)
    loss = fresh.loss(selection.removed)
    assert loss == pytest.approx(selection.pruned_loss, rel=1e-5)
    for swap in space.swaps(result):  # brute force: every allowed swap, scored afresh
        assert fresh.loss([names[i] for i in apply(result, swap)]) >= loss - 1e-6


def test_the_search_only_improves_on_the_rerank(tmp_path, tokenizer, corpus):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 8, seed=3), tokenizer=tokenizer)
    plain = pruner.select(_config(tmp_path, corpus, remove=4, search="none", top_k=2))
    searched = pruner.select(_config(tmp_path, corpus, remove=4, top_k=2))
    assert "search" not in plain.cost
    # the same rounds; the search comes after them
    assert [r["candidates"] for r in searched.rounds] == [r["candidates"] for r in plain.rounds]
    assert searched.pruned_loss <= plain.pruned_loss
    points = searched.cost["search"]["trajectory"]
    assert points[0]["removed"] == sorted(plain.removed, key=lambda n: int(n.split(".")[1]))
    work = [p["forward_passes"] for p in points]
    assert work == sorted(work) and work[-1] <= searched.cost["forward_passes"]


def test_the_default_budget_is_half_the_work_before_the_search(tmp_path, tokenizer, corpus):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 12, seed=1), tokenizer=tokenizer)
    default = pruner.select(_config(tmp_path, corpus, remove=6, top_k=2)).cost
    certified = pruner.select(_config(tmp_path, corpus, remove=6, top_k=2, search="certify")).cost
    before = default["search"]["trajectory"][0]["forward_passes"]
    # (the first point also counts the start's losses, asked for again)
    assert default["search"]["budget"] == pytest.approx(before / 2, rel=0.05)
    assert certified["search"]["budget"] is None and certified["search"]["certificate"]["local_optimum"]
    # the certificate costs more than the budget here; within it, the default stops without one
    assert certified["forward_passes"] - before > before / 2 + 1
    assert not default["search"]["certificate"]["local_optimum"]
    assert default["forward_passes"] < certified["forward_passes"]


def test_a_budget_stops_the_search_without_a_certificate(tmp_path, tokenizer, corpus):
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 8, seed=3), tokenizer=tokenizer)
    whole = pruner.select(_config(tmp_path, corpus, remove=4, top_k=2, search="certify"))
    cheap = pruner.select(_config(tmp_path, corpus, remove=4, top_k=2, search="certify", search_budget=0.5))
    certificate = cheap.cost["search"]["certificate"]
    assert not certificate["local_optimum"] and "budget" in certificate["reason"]
    assert certificate["settled"] < certificate["swaps"]
    assert cheap.cost["forward_passes"] < whole.cost["forward_passes"]


def test_the_report_shows_the_trajectory_and_the_certificate(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    args = ["-m", str(tiny_model_dir), "-o", str(out), "--calibration", str(text_file), *CAL]
    proc = run("prune", *args, "--remove", "2", "--search", "certify")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "blockprune_report.json").read_text())
    assert (
        report["config"]["search"] == "certify" and report["cost"]["search"]["certificate"]["local_optimum"]
    )
    page = (out / "report.html").read_text()
    assert 'id="plot-trajectory"' in page and "Certified local optimum: none of its 8 single swaps" in page


def test_the_search_settings_are_checked(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    args = ["-m", str(tiny_model_dir), "-o", str(out), "--calibration", str(text_file), *CAL, "--remove", "2"]
    assert_user_error(
        run("prune", *args, "--method", "sleb", "--search-budget", "3"),
        "--search-budget is the budget of the energy method's swap search",
    )
    assert_user_error(
        run("prune", *args, "--search-budget", "0"), "--search-budget must be a positive number"
    )
    assert_user_error(
        run("prune", *args, "--search", "none", "--search-budget", "3"), "--search-budget is the budget"
    )
    assert not out.exists()
