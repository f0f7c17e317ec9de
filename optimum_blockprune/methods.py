"""Names of the block-selection methods (a light module: the CLI's argument parser reads it).

``energy`` is this project's method (energy model, solver, rerank by real loss); the others are
peers' baselines, implemented in ``baselines.py``.
"""

from __future__ import annotations

ENERGY_METHOD = "energy"
METHODS = (
    ENERGY_METHOD,
    "shortgpt",
    "shortgpt-iterative",
    "angular",
    "last",
    "sleb",
    "blockpruner",
    "taylor",
    "random",
)
