"""Solver contract helpers and :func:`solve`, which dispatches to the registered solvers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import dimod
import numpy as np

from ..energy import EnergyModel
from ..errors import BlockPruneError
from ..problem import Problem, build_problem


class Solver(Protocol):
    """What a registered solver provides."""

    name: str

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet: ...


def check_options(solver: str, options: dict[str, Any], accepted: Iterable[str]) -> None:
    """One-line error for options the solver does not know."""
    accepted = sorted(accepted)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise BlockPruneError(
            f"solver {solver!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )


def check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise BlockPruneError(f"top_k must be a positive whole number; got {top_k!r}")
    return int(top_k)


def make_sampleset(
    problem: Problem, X: np.ndarray, top_k: int, started: float, **info: Any
) -> dimod.SampleSet:
    """SampleSet of the distinct feasible rows of X (k, N), lowest EnergyModel energy first, at most top_k.

    ``info`` gets ``seconds`` (since ``started``, a ``time.perf_counter()`` value) plus the given items.
    """
    X = np.asarray(X, dtype=np.int8).reshape(-1, len(problem.energy))
    X = X[problem.feasible(X)]
    if len(X):
        X = np.unique(X, axis=0)
    energies = problem.energy.energies(X)
    # energy first, then the configuration itself, so ties come out in a reproducible order
    order = np.lexsort((*X.T[::-1], energies))[:top_k]
    X, energies = X[order], energies[order]
    info = {
        "optimal": False,
        "lower_bound": None,
        "gap": None,
        **info,
        "seconds": time.perf_counter() - started,
    }
    return dimod.SampleSet.from_samples(
        (X, problem.names), vartype="BINARY", energy=energies, info=info, sort_labels=False
    )


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
    from .. import plugins

    registry = plugins.solvers()
    if solver not in registry:
        raise BlockPruneError(f"unknown solver {solver!r}; registered solvers: {', '.join(sorted(registry))}")
    problem = build_problem(energy, remove, min_params=min_params, protect=protect, force=force)
    return registry[solver].sample(problem, top_k=check_top_k(top_k), **options)


def solution_names(sampleset: dimod.SampleSet) -> list[list[str]]:
    """Removed block names of each row, in row order and variable order."""
    labels = list(sampleset.variables)
    return [[labels[i] for i in np.flatnonzero(row)] for row in sampleset.record.sample]
