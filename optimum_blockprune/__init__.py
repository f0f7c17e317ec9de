"""optimum-blockprune: remove whole transformer blocks chosen by constrained binary optimisation.

Public names are imported lazily so that ``optimum-cli`` starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BlockPruneConfig": "optimum_blockprune.config",
    "BlockPruner": "optimum_blockprune.pruner",
    "BlockPruneError": "optimum_blockprune.errors",
    "EnergyModel": "optimum_blockprune.energy",
    "load_pruned": "optimum_blockprune.checkpoint",
    "solve": "optimum_blockprune.solvers",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optimum_blockprune' has no attribute {name!r}")
