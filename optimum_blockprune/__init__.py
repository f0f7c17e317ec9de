"""optimum-blockprune: remove whole transformer blocks chosen by constrained binary optimisation."""

from __future__ import annotations

__version__ = "0.1.0"

from .energy import EnergyModel
from .errors import BlockPruneError

__all__ = ["BlockPruneError", "EnergyModel", "__version__"]
