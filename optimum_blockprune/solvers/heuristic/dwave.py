"""Heuristic solvers on dwave-samplers: tabu search and simulated annealing.

Both sample a penalised BQM over the free blocks (protected, excluded and forced blocks are fixed
out): ``E(x) + λ Σ_g (Σ_{i∈g} x_i − k_g)²`` for every count constraint, with λ from the energy
scale, doubled while fewer than half the samples meet the counts. With a parameter budget a second
BQM adds ``λ ((wᵀx − b)/w̄)²`` (the budget is an inequality: the first BQM covers the case where it
does not bind). Every sample is then repaired to feasibility and polished by a local search whose
moves keep every constraint (:mod:`.moves`); the best ones are grown by their neighbours into a
top-K list. Only feasible configurations come out. Deterministic for a given ``seed``.
"""

from __future__ import annotations

from typing import Any

import dimod
import numpy as np

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers.base import Solver, make_sampleset
from optimum_blockprune.solvers.heuristic.moves import Moves
from optimum_blockprune.solvers.problem import Problem, random_starts, typical_count

PENALTY_TRIES = 6


def penalty_scale(h: np.ndarray, J: np.ndarray, k: int) -> float:
    """Largest change of ``h·x + xᵀJx`` from flipping one block next to a k-block configuration."""
    off = 2 * np.abs(J - np.diag(np.diag(J)))
    near = -np.sort(-off, axis=1)[:, :k].sum(axis=1)
    scale = float(np.max(np.abs(h + np.diag(J)) + near, initial=0.0))
    return scale if scale > 0 else 1.0


def penalised_bqm(
    h: np.ndarray,
    J: np.ndarray,
    groups: list[tuple[np.ndarray, int | None]],
    strength: float,
    budget: tuple[np.ndarray, float] | None = None,
) -> dimod.BinaryQuadraticModel:
    """QUBO of ``h·x + xᵀJx + strength·(Σ_g (Σ_{i∈g} x_i − k_g)² [+ ((wᵀx − b)/w̄)²])`` over 0..n-1."""
    n = len(h)
    Q, lin, offset = J.copy(), h.copy(), 0.0
    for members, k in groups:
        if k is None:
            continue
        ind = np.zeros(n)
        ind[members] = 1
        Q += strength * np.outer(ind, ind)
        lin -= 2 * strength * k * ind
        offset += strength * k * k
    if budget is not None:
        w, b = budget
        scale = float(w[w > 0].mean()) if (w > 0).any() else 1.0
        v, c = w / scale, b / scale
        Q += strength * np.outer(v, v)
        lin -= 2 * strength * c * v
        offset += strength * c * c
    linear = lin + np.diag(Q)
    rows, cols = np.triu_indices(n, k=1)
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (rows, cols, 2 * Q[rows, cols]), offset, "BINARY"
    )


class _DwaveSolver(Solver):
    """Shared pipeline: sample the penalised BQM, repair, polish, keep the top_k distinct ones."""

    name = ""
    options: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}
    penalty_start = 1.0  # times penalty_scale(); doubled while fewer than half the samples meet the counts

    def _run(self, bqm: dimod.BinaryQuadraticModel, problem: Problem, **kwargs: Any) -> dimod.SampleSet:
        raise NotImplementedError

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        top_k, started = self.begin(top_k, options)
        _, h, J = problem.reduced()
        n = len(h)
        kwargs = {**self.defaults, **options}
        if int(kwargs.get("num_reads", 1)) < 1:
            raise BlockPruneError(f"num_reads must be at least 1; got {kwargs['num_reads']!r}")
        moves = Moves(problem, h, J)
        counted = [c for _, c in problem.groups if c is not None]
        trivial = n == 0 or (
            problem.budget is None and all(c in (0, len(m)) for m, c in problem.groups if c is not None)
        )
        strength = kwargs.pop("penalty", None)
        tries = 1 if strength is not None else PENALTY_TRIES
        scale = penalty_scale(h, J, typical_count(problem))
        strength = float(strength) if strength is not None else self.penalty_start * scale
        if trivial:
            Y = np.zeros((1, n), dtype=np.int8)
            for members, count in problem.groups:
                Y[0, members] = 1 if count else 0
            feasible_fraction = 1.0
        else:
            for attempt in range(tries):
                Y = self._samples(penalised_bqm(h, J, problem.groups, strength), problem, **kwargs)
                meets = np.ones(len(Y), dtype=bool)
                for members, count in problem.groups:
                    if count is not None:
                        meets &= Y[:, members].sum(axis=1) == count
                if not counted or meets.mean() >= 0.5 or attempt == tries - 1:
                    break
                strength *= 2
            if problem.budget is not None:
                budget = (problem.budget[0].astype(float), float(problem.budget[1]))
                more = self._samples(penalised_bqm(h, J, problem.groups, strength, budget), problem, **kwargs)
                Y = np.concatenate([Y, more])
            feasible_fraction = float(problem.holds(Y).mean())
            Y = moves.descend(moves.repair(Y))
            Y = moves.low_states(Y, top_k)
        return make_sampleset(
            problem,
            problem.expand(Y),
            top_k,
            started,
            solver=self.name,
            penalty=strength,
            feasible_fraction=feasible_fraction,
        )

    def _samples(self, bqm: dimod.BinaryQuadraticModel, problem: Problem, **kwargs: Any) -> np.ndarray:
        raw = self._run(bqm, problem, **kwargs)
        return raw.record.sample[:, np.argsort(list(raw.variables))].astype(np.int8)


class TabuSolver(_DwaveSolver):
    """dwave-samplers TabuSampler, deterministic: no timeout, bounded restarts, fixed seed."""

    name = "tabu"
    options = ("seed", "num_reads", "num_restarts", "tenure", "penalty", "lower_bound_z")
    defaults = {"seed": 0, "num_reads": 16, "num_restarts": 10, "timeout": None, "lower_bound_z": 20_000}

    def _run(self, bqm: dimod.BinaryQuadraticModel, problem: Problem, **kwargs: Any) -> dimod.SampleSet:
        from dwave.samplers import TabuSampler

        # each read starts from a random configuration that meets the counts
        starts = random_starts(problem, kwargs["num_reads"], kwargs["seed"])
        return TabuSampler().sample(bqm, initial_states=(starts, list(range(bqm.num_variables))), **kwargs)


class SimulatedAnnealingSolver(_DwaveSolver):
    """dwave-samplers SimulatedAnnealingSampler with a fixed seed."""

    name = "sa"
    options = ("seed", "num_reads", "num_sweeps", "beta_range", "penalty")
    defaults = {"seed": 0, "num_reads": 32, "num_sweeps": 1000}
    penalty_start = 1 / 32  # a strong penalty freezes the annealer; a weak one is repaired

    def _run(self, bqm: dimod.BinaryQuadraticModel, problem: Problem, **kwargs: Any) -> dimod.SampleSet:
        from dwave.samplers import SimulatedAnnealingSampler

        return SimulatedAnnealingSampler().sample(bqm, **kwargs)
