"""Built-in solvers, registered through the same pluggy hook as third-party ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dimod

from ..plugins import hookimpl
from ..problem import Problem
from .bnb import BranchAndBoundSolver
from .dwave import SimulatedAnnealingSolver, TabuSolver
from .exhaustive import ExhaustiveSolver
from .registry import Solver, check_options, check_top_k, solution_names, solve
from .sampler import SolverSampler

AUTO_THRESHOLD = 2_000_000
AUTO_TIME_LIMIT = 10.0

__all__ = [
    "AutoSolver",
    "BranchAndBoundSolver",
    "ExhaustiveSolver",
    "SimulatedAnnealingSolver",
    "Solver",
    "SolverSampler",
    "TabuSolver",
    "register_solvers",
    "solution_names",
    "solve",
]


class AutoSolver:
    """Exhaustive (proven optimal) up to ``threshold`` configurations; beyond, branch and bound
    with a time limit (``time_limit``, default 10 s), started from tabu's best configurations:
    ``info["optimal"]`` says whether it finished the proof."""

    name = "auto"
    options = ("threshold", "time_limit", "node_limit", "seed", "limit")

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        check_options(self.name, options, self.options)
        top_k = check_top_k(top_k)
        started = time.perf_counter()
        threshold = int(options.pop("threshold", AUTO_THRESHOLD))
        seed = options.get("seed", 0)
        if problem.num_configurations <= threshold:
            inner: Any = ExhaustiveSolver()
            kwargs = {k: v for k, v in options.items() if k in inner.options}
        else:
            inner = BranchAndBoundSolver()
            incumbents = TabuSolver().sample(problem, top_k=top_k, seed=seed)
            kwargs = {k: v for k, v in options.items() if k in inner.options}
            kwargs.setdefault("time_limit", AUTO_TIME_LIMIT)
            kwargs["incumbents"] = incumbents
        result = inner.sample(problem, top_k=top_k, **kwargs)
        result.info.update(solver=self.name, used=inner.name, seconds=time.perf_counter() - started)
        return result


@hookimpl
def register_solvers(register: Callable[[str, Any], None]) -> None:
    """Register exhaustive, bnb, tabu, sa and auto."""
    for solver in (
        ExhaustiveSolver(),
        BranchAndBoundSolver(),
        TabuSolver(),
        SimulatedAnnealingSolver(),
        AutoSolver(),
    ):
        register(solver.name, solver)
