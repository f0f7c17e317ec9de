"""OR-Tools CP-SAT as an optimum-blockprune solver (``cpsat``), registered through the public hook
and built on the public solver base (option checks, timing, result type)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dimod
import numpy as np

from optimum_blockprune import hookimpl
from optimum_blockprune.solvers import Solver, make_sampleset

__all__ = ["CpSatSolver", "register_solvers"]

INTEGER_RANGE = 2**30  # largest scaled objective; CP-SAT works in 64-bit integers, its LP likes them small


class CpSatSolver(Solver):
    """Exact top-K with OR-Tools CP-SAT on the linearised, integer-scaled energy."""

    name = "cpsat"
    options = ("time_limit", "num_workers", "seed")

    def sample(self, problem: Any, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        top_k, started = self.begin(top_k, options)
        from ortools.sat.python import cp_model

        offset, h, J = problem.reduced()
        n = len(h)
        a = h + np.diag(J)  # E(y) = offset + a·y + Σ_{i<j} B_ij y_i y_j on binaries
        B = 2 * np.triu(J, k=1)
        pairs = np.argwhere(B != 0)
        scale = _scale(a, B[pairs[:, 0], pairs[:, 1]] if len(pairs) else np.zeros(0))
        lin = np.round(a * scale).astype(np.int64)
        quad = np.round(B * scale).astype(np.int64)
        # each rounded coefficient is off by at most 1/2 (in scaled units)
        rounding_error = 0.5 * (n + len(pairs)) / scale

        model = cp_model.CpModel()
        y = [model.NewBoolVar(f"y{i}") for i in range(n)]
        terms = [(int(lin[i]), y[i]) for i in range(n) if lin[i]]
        for i, j in pairs:
            c = int(quad[i, j])
            if not c:
                continue
            z = model.NewBoolVar(f"z{i}_{j}")
            if c > 0:  # minimisation pushes z down: z must be 1 when both are
                model.AddBoolOr([y[i].Not(), y[j].Not(), z])
            else:  # minimisation pushes z up: z may be 1 only when both are
                model.AddImplication(z, y[i])
                model.AddImplication(z, y[j])
            terms.append((c, z))
        for constraint in problem.constraints:
            expr = sum(int(w) * y[i] for i, w in enumerate(constraint.weights) if w)
            if constraint.sense == "==":
                model.Add(expr == int(constraint.rhs))
            else:
                model.Add(expr >= int(constraint.rhs))
        model.Minimize(sum(c * v for c, v in terms))

        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = float(options.get("time_limit", 60.0))
        solver.parameters.num_workers = int(options.get("num_workers", 8))
        solver.parameters.random_seed = int(options.get("seed", 0))
        rows, optimal, bound = [], True, None
        for _ in range(top_k):
            status = solver.Solve(model)
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                optimal = optimal and status == cp_model.INFEASIBLE  # no more configurations
                break
            optimal = optimal and status == cp_model.OPTIMAL
            if bound is None:
                bound = solver.BestObjectiveBound() / scale + offset - rounding_error
            row = np.array([solver.Value(v) for v in y], dtype=np.int8)
            rows.append(row)
            # exclude this configuration from the next solves
            model.AddBoolOr([y[i].Not() if row[i] else y[i] for i in range(n)])
            if n == 0:
                break
        X = problem.expand(np.array(rows, dtype=np.int8).reshape(-1, n))
        energies = problem.energy.energies(X[problem.feasible(X)])
        best = float(energies.min()) if len(energies) else None
        info = {
            "solver": self.name,
            "optimal": bool(optimal and len(rows)),
            "lower_bound": None if bound is None else float(min(bound, best)),
            "gap": None if bound is None else float(best - min(bound, best)),
            "rounding_error": float(rounding_error),
            "scale": float(scale),
        }
        return make_sampleset(problem, X, top_k, started, **info)


def _scale(linear: np.ndarray, pair: np.ndarray) -> float:
    """Power of two that brings the largest possible objective to about INTEGER_RANGE."""
    total = float(np.abs(linear).sum() + np.abs(pair).sum())
    if total == 0:
        return 1.0
    return float(2.0 ** np.floor(np.log2(INTEGER_RANGE / total)))


@hookimpl
def register_solvers(register: Callable[[str, Any], None]) -> None:
    """Register ``cpsat``."""
    register(CpSatSolver.name, CpSatSolver())
