"""The public solver contract: the :class:`Solver` base class and the helpers every solver uses
(option and ``top_k`` checks, timing, and the one result type, a ``dimod.SampleSet``). Third-party
solvers (see ``plugins/optimum-blockprune-cpsat``) use these too."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import dimod
import numpy as np

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers.problem import Problem


class Solver:
    """Base of a solver (what ``register_solvers`` registers): a ``name``, the ``options`` it
    accepts, and :meth:`sample`. Subclasses begin ``sample`` with :meth:`begin` (option and
    ``top_k`` checks, the start time) and end it with :func:`make_sampleset`. Any object with
    ``name`` and ``sample`` works as a solver; this base only saves the boilerplate."""

    name: str = ""
    options: tuple[str, ...] = ()

    def begin(self, top_k: int, options: dict[str, Any]) -> tuple[int, float]:
        """``(top_k, started)``: one-line errors for unknown options or a bad ``top_k``, and the
        ``time.perf_counter()`` the run starts at (for ``info["seconds"]``)."""
        check_options(self.name, options, self.options)
        return check_top_k(top_k), time.perf_counter()

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        """The ``top_k`` lowest-energy feasible configurations of ``problem``."""
        raise NotImplementedError


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
