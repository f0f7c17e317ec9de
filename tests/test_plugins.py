"""Plugin registry: third-party adapters and solvers arrive through the same hooks as built-ins."""

from __future__ import annotations

import types

import pytest
from conftest import tiny_model

from optimum_blockprune import BlockPruneError, plugins
from optimum_blockprune.adapters.llama import LlamaAdapter


class OtherLlama(LlamaAdapter):
    name = "other-llama"
    model_types = ("llama",)


@pytest.fixture
def third_party():
    module = types.ModuleType("third_party_plugin")

    @plugins.hookimpl
    def register_adapters(register):
        register(OtherLlama())

    @plugins.hookimpl
    def register_solvers(register):
        register("first-k", object())

    module.register_adapters, module.register_solvers = register_adapters, register_solvers
    pm = plugins.plugin_manager()
    pm.register(module, name="third_party_plugin")
    yield
    pm.unregister(name="third_party_plugin")


def test_builtins_come_through_the_hooks():
    assert "llama" in plugins.adapters()
    assert {"exhaustive", "tabu", "sa", "auto"} <= set(plugins.solvers())


def test_a_registered_plugin_adds_and_overrides(third_party):
    assert "other-llama" in plugins.adapters() and "first-k" in plugins.solvers()
    # the most recently registered plugin is asked first, so it wins for the same model type
    assert plugins.get_adapter(tiny_model("llama", 2)).name == "other-llama"
    assert plugins.get_adapter(tiny_model("llama", 2), name="llama").name == "llama"


def test_unknown_adapter_name_lists_registered_ones():
    with pytest.raises(BlockPruneError, match="unknown adapter 'nope'; registered adapters:") as info:
        plugins.get_adapter(tiny_model("llama", 2), name="nope")
    assert "llama" in str(info.value) and "other-llama" not in str(info.value)
