"""The built-in selection methods, registered through the same ``register_methods`` hook as a
third party's: this project's energy method first (the default), then the peers' baselines."""

from __future__ import annotations

from collections.abc import Callable

from optimum_blockprune.hookspecs import hookimpl
from optimum_blockprune.selection.baselines import baseline_methods
from optimum_blockprune.selection.energy import ENERGY
from optimum_blockprune.selection.registry import Method


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    """Register ``energy`` and every baseline (shortgpt, angular, sleb, ...)."""
    for method in (ENERGY, *baseline_methods()):
        register(method)
