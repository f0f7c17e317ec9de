"""Plugin hooks: the pluggy hook specs, ``hookimpl`` and the process-wide plugin manager.

Built-in adapters, solvers and selection methods register through the same hooks as third-party
packages, which declare an entry point in the group ``optimum_blockprune``::

    [project.entry-points.optimum_blockprune]
    myarch = "my_package.plugin"      # a module with @hookimpl functions

Set ``OPTIMUM_BLOCKPRUNE_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-ins. The registries that
read these hooks live with what they register: :mod:`optimum_blockprune.model.registry` (adapters),
:mod:`optimum_blockprune.solvers.registry` (solvers), :mod:`optimum_blockprune.selection.registry`
(methods).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import pluggy

PROJECT = "optimum_blockprune"
DISABLE_AUTOLOAD_ENV = "OPTIMUM_BLOCKPRUNE_DISABLE_PLUGIN_AUTOLOAD"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Modules holding the built-in hook implementations, loaded by name (as pytest loads its own
#: plugins), so that this bottom module does not import the stages above it.
BUILTIN_PLUGINS = (
    "optimum_blockprune.model.adapters",
    "optimum_blockprune.solvers",
    "optimum_blockprune.selection.methods",
)


@hookspec
def register_adapters(register: Callable[[Any], None]) -> None:
    """Register architecture adapters: call ``register(adapter_instance)`` for each
    (an :class:`optimum_blockprune.Adapter`)."""


@hookspec
def register_solvers(register: Callable[[str, Any], None]) -> None:
    """Register solvers: call ``register(name, solver)``; a solver has
    ``sample(problem, top_k=..., **options) -> dimod.SampleSet`` (see :class:`optimum_blockprune.Solver`)."""


@hookspec
def register_methods(register: Callable[[Any], None]) -> None:
    """Register block-selection methods: call ``register(method)`` for each
    :class:`optimum_blockprune.selection.Method`."""


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and installed entry points loaded."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(sys.modules[__name__])
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        pm.load_setuptools_entrypoints(PROJECT)
    pm.check_pending()
    return pm


def collect(hook_name: str, key: Callable[..., str]) -> dict[str, Any]:
    """What every plugin registers through ``hook_name``, by name (``key`` maps the arguments of one
    ``register(...)`` call to its name; the value is the last argument)."""
    items: dict[str, Any] = {}

    def register(*args: Any) -> None:
        items.setdefault(key(*args), args[-1])

    # pluggy calls the most recently registered plugins first, so third parties win name clashes.
    getattr(plugin_manager().hook, hook_name)(register=register)
    return items
