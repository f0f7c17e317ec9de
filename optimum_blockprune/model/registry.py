"""The adapter registry: every adapter registered through the ``register_adapters`` hook, and
:func:`get_adapter`, which picks the one for a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.hookspecs import collect

if TYPE_CHECKING:
    from torch import nn

    from optimum_blockprune.model.adapters.base import Adapter


def adapters() -> dict[str, Adapter]:
    """All registered adapters by name."""
    return collect("register_adapters", lambda adapter: adapter.name)


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
