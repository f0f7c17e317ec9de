"""Plugin registry: third-party adapters, solvers and selection methods arrive through the same
hooks as built-ins."""

from __future__ import annotations

import json
import sys
import types

import pytest
from conftest import tiny_model

from optimum_blockprune import BlockPruneConfig, BlockPruneError, BlockPruner, hookimpl
from optimum_blockprune.hookspecs import plugin_manager
from optimum_blockprune.model.adapters.llama import LlamaAdapter
from optimum_blockprune.model.registry import adapters, get_adapter
from optimum_blockprune.selection import Method, Request, Selection, methods
from optimum_blockprune.solvers import solvers


class OtherLlama(LlamaAdapter):
    name = "other-llama"
    model_types = ("llama",)


@pytest.fixture
def third_party():
    module = types.ModuleType("third_party_plugin")

    @hookimpl
    def register_adapters(register):
        register(OtherLlama())

    @hookimpl
    def register_solvers(register):
        register("first-k", object())

    module.register_adapters, module.register_solvers = register_adapters, register_solvers
    pm = plugin_manager()
    pm.register(module, name="third_party_plugin")
    yield
    pm.unregister(name="third_party_plugin")


def test_builtins_come_through_the_hooks():
    assert "llama" in adapters()
    assert {"exhaustive", "tabu", "sa", "auto"} <= set(solvers())


def test_a_registered_plugin_adds_and_overrides(third_party):
    assert "other-llama" in adapters() and "first-k" in solvers()
    # the most recently registered plugin is asked first, so it wins for the same model type
    assert get_adapter(tiny_model("llama", 2)).name == "other-llama"
    assert get_adapter(tiny_model("llama", 2), name="llama").name == "llama"


def test_unknown_adapter_name_lists_registered_ones():
    with pytest.raises(BlockPruneError, match="unknown adapter 'nope'; registered adapters:") as info:
        get_adapter(tiny_model("llama", 2), name="nope")
    assert "llama" in str(info.value) and "other-llama" not in str(info.value)


# --------------------------------------------------------------------------- a third-party method
def _after_first(request: Request) -> Selection:
    """Remove the N blocks right after the first one (a deliberately simple criterion)."""
    remove, _ = request.config.removal_target(request.blocks, request.model_params)
    removed = [b.name for b in request.blocks[1 : 1 + remove]]
    scorer = request.loss_scorer()
    return Selection(
        removed,
        scorer.loss(),
        scorer.loss(removed),
        method="after-first",
        summary="the blocks after the first",
    )


@pytest.fixture
def third_party_method():
    module = types.ModuleType("third_party_method")

    @hookimpl
    def register_methods(register):
        register(Method("after-first", _after_first, ("layer", "sublayer"), "the N blocks after the first"))

    module.register_methods = register_methods
    pm = plugin_manager()
    pm.register(module, name="third_party_method")
    yield
    pm.unregister(name="third_party_method")


def test_builtin_methods_come_through_the_hook():
    assert list(methods())[:2] == ["energy", "shortgpt"]
    with pytest.raises(BlockPruneError, match="method must be one of energy, shortgpt"):
        BlockPruneConfig(remove=2, method="after-first")


def test_a_plugin_method_runs_through_the_pruner(third_party_method, tokenizer, text_file, tmp_path):
    assert "after-first" in methods()
    config = BlockPruneConfig(
        remove=2, method="after-first", calibration=str(text_file), num_samples=4, seq_len=16, batch_size=2
    )
    pruner = BlockPruner(tiny_model("llama", 4), tokenizer, get_adapter(tiny_model("llama", 4)))
    result = pruner.prune(config, tmp_path / "out", write_report=False)
    assert result.removed == ["layers.1", "layers.2"]
    assert result.report["method"] == "after-first"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "chosen by the blocks after the first" in card and "energy minimisation" not in card


def test_a_plugin_method_runs_through_the_cli(
    third_party_method, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    from optimum_blockprune.cli import main

    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_model_dir), "--calibration", str(text_file), "--num-samples", "4"]
    argv += ["--seq-len", "16", "--batch-size", "2", "--remove", "2", "--method", "after-first"]
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    main([*argv, "--output", str(out), "--no-report"])
    report = json.loads((out / "blockprune_report.json").read_text())
    assert report["method"] == "after-first" and report["removed"] == ["layers.1", "layers.2"]
