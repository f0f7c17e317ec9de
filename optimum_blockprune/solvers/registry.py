"""The solver registry: every solver registered through the ``register_solvers`` hook, and
:func:`solve`, which dispatches to one by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dimod
import numpy as np

from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.hookspecs import collect
from optimum_blockprune.solvers.base import Solver, check_top_k
from optimum_blockprune.solvers.problem import build_problem


def solvers() -> dict[str, Solver]:
    """All registered solvers by name."""
    return collect("register_solvers", lambda name, solver: name)


def get_solver(name: str) -> Solver:
    """The solver registered as ``name``; a one-line error naming the registered ones otherwise."""
    registry = solvers()
    if name not in registry:
        raise BlockPruneError(f"unknown solver {name!r}; registered solvers: {', '.join(sorted(registry))}")
    return registry[name]


def solve(
    energy: EnergyModel,
    remove: int | Mapping[str, int] | None = None,
    solver: str = "auto",
    top_k: int = 10,
    *,
    min_params: int | None = None,
    protect: Iterable[str] = (),
    force: Iterable[str] = (),
    **options: Any,
) -> dimod.SampleSet:
    """Build the problem and sample it with the named registered solver.

    ``remove``: a block count or counts per kind (``{"attn": 2, "mlp": 3}``); ``min_params``: the
    removed blocks must hold at least this many parameters (see :func:`build_problem`).
    """
    chosen = get_solver(solver)
    problem = build_problem(energy, remove, min_params=min_params, protect=protect, force=force)
    return chosen.sample(problem, top_k=check_top_k(top_k), **options)


def solution_names(sampleset: dimod.SampleSet) -> list[list[str]]:
    """Removed block names of each row, in row order and variable order."""
    labels = list(sampleset.variables)
    return [[labels[i] for i in np.flatnonzero(row)] for row in sampleset.record.sample]
