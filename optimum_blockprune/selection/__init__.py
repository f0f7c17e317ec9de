"""Choosing the blocks to remove: every method (this project's energy method and the peers'
baselines) is a :class:`Method` registered through the ``register_methods`` hook."""

from optimum_blockprune.selection.registry import (
    ENERGY_METHOD,
    Method,
    Request,
    Selection,
    get_method,
    methods,
)

__all__ = ["ENERGY_METHOD", "Method", "Request", "Selection", "get_method", "methods"]
