"""Built-in solvers, registered through the same pluggy hook as third-party ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dimod

from ..plugins import hookimpl
from ..problem import Problem
from .dwave import SimulatedAnnealingSolver, TabuSolver
from .exhaustive import ExhaustiveSolver
from .registry import Solver, check_options, solution_names, solve

AUTO_THRESHOLD = 2_000_000

__all__ = [
    "AutoSolver",
    "ExhaustiveSolver",
    "SimulatedAnnealingSolver",
    "Solver",
    "TabuSolver",
    "register_solvers",
    "solution_names",
    "solve",
]


class AutoSolver:
    """Exhaustive (proven optimal) up to ``threshold`` configurations, tabu beyond."""

    name = "auto"
    options = ("threshold", *sorted(set(ExhaustiveSolver.options) | set(TabuSolver.options)))

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        check_options(self.name, options, self.options)
        started = time.perf_counter()
        threshold = int(options.pop("threshold", AUTO_THRESHOLD))
        inner = ExhaustiveSolver() if problem.num_configurations <= threshold else TabuSolver()
        result = inner.sample(
            problem, top_k=top_k, **{k: v for k, v in options.items() if k in inner.options}
        )
        result.info.update(solver=self.name, used=inner.name, seconds=time.perf_counter() - started)
        return result


@hookimpl
def register_solvers(register: Callable[[str, Any], None]) -> None:
    """Register exhaustive, tabu, sa and auto."""
    for solver in (ExhaustiveSolver(), TabuSolver(), SimulatedAnnealingSolver(), AutoSolver()):
        register(solver.name, solver)
