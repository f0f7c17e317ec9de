"""Plugin system: pluggy hook specs, the plugin manager, and the adapter / solver registries.

Built-in adapters and solvers register through the same hooks as third-party packages, which
declare an entry point in the group ``optimum_blockprune``::

    [project.entry-points.optimum_blockprune]
    myarch = "my_package.plugin"      # a module with @hookimpl functions

Set ``OPTIMUM_BLOCKPRUNE_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-ins.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import pluggy

from .errors import BlockPruneError

if TYPE_CHECKING:
    from torch import nn

    from .adapters.base import Adapter

PROJECT = "optimum_blockprune"
DISABLE_AUTOLOAD_ENV = "OPTIMUM_BLOCKPRUNE_DISABLE_PLUGIN_AUTOLOAD"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

BUILTIN_PLUGINS = (
    "optimum_blockprune.adapters",
    "optimum_blockprune.solvers",
)


@hookspec
def register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register architecture adapters: call ``register(adapter_instance)`` for each."""


@hookspec
def register_solvers(register: Callable[[str, Any], None]) -> None:
    """Register solvers: call ``register(name, solver)``; a solver has
    ``sample(problem, top_k=..., **options) -> dimod.SampleSet``."""


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and installed entry points loaded."""
    import importlib
    import sys

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(sys.modules[__name__])
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        pm.load_setuptools_entrypoints(PROJECT)
    pm.check_pending()
    return pm


def _collect(hook_name: str) -> dict[str, Any]:
    items: dict[str, Any] = {}

    def register_adapter(adapter: Adapter) -> None:
        items.setdefault(adapter.name, adapter)

    def register_solver(name: str, solver: Any) -> None:
        items.setdefault(name, solver)

    register = register_adapter if hook_name == "register_adapters" else register_solver
    # pluggy calls the most recently registered plugins first, so third parties win name clashes.
    getattr(plugin_manager().hook, hook_name)(register=register)
    return items


def adapters() -> dict[str, Adapter]:
    """All registered adapters by name."""
    return _collect("register_adapters")


def solvers() -> dict[str, Any]:
    """All registered solvers by name."""
    return _collect("register_solvers")


def get_adapter(model: nn.Module, name: str | None = None) -> Adapter:
    """The adapter named ``name``, or the first registered one that supports ``model``."""
    registry = adapters()
    if name is not None:
        if name not in registry:
            raise BlockPruneError(
                f"unknown adapter {name!r}; registered adapters: {', '.join(sorted(registry))}"
            )
        return registry[name]
    specific = [a for a in registry.values() if not getattr(a, "fallback", False)]
    fallbacks = [a for a in registry.values() if getattr(a, "fallback", False)]
    for adapter in specific:
        if adapter.supports(model):
            return adapter
    reasons = []
    for adapter in fallbacks:
        reason = adapter.why_not(model) if hasattr(adapter, "why_not") else "declined"
        if reason is None:
            return adapter
        reasons.append(f"{adapter.name}: {reason}")
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise BlockPruneError(
        f"no adapter supports architecture {model_type!r} ({'; '.join(reasons) or 'no fallback'}); "
        f"registered adapters: {', '.join(sorted(registry))} (install a plugin that adds one, or pass --adapter NAME)"
    )


def adapter_for_type(model_type: str) -> Adapter:
    """The adapter that declares ``model_type`` (used before a model exists, e.g. while loading)."""
    registry = adapters().values()
    for adapter in registry:
        if model_type in adapter.model_types:
            return adapter
    for adapter in registry:
        if getattr(adapter, "fallback", False):
            return adapter
    raise BlockPruneError(f"no adapter declares model type {model_type!r}; install a plugin that adds one")
