"""Built-in solvers, registered through the same pluggy hook as third-party ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dimod

from optimum_blockprune.hookspecs import hookimpl
from optimum_blockprune.solvers.base import Solver, check_options, check_top_k, make_sampleset
from optimum_blockprune.solvers.exact.bnb import BranchAndBoundSolver
from optimum_blockprune.solvers.exact.exhaustive import ExhaustiveSolver
from optimum_blockprune.solvers.heuristic.dwave import SimulatedAnnealingSolver, TabuSolver
from optimum_blockprune.solvers.problem import Problem
from optimum_blockprune.solvers.registry import solution_names, solve, solvers
from optimum_blockprune.solvers.sampler import SolverSampler

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
    "check_options",
    "check_top_k",
    "make_sampleset",
    "register_solvers",
    "solution_names",
    "solve",
    "solvers",
]


class AutoSolver(Solver):
    """Exhaustive (proven optimal) up to ``threshold`` configurations; beyond, branch and bound
    with a time limit (``time_limit``, default 10 s), started from tabu's best configurations:
    ``info["optimal"]`` says whether it finished the proof."""

    name = "auto"
    options = ("threshold", "time_limit", "node_limit", "seed", "limit")

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        top_k, started = self.begin(top_k, options)
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
