"""Heuristic solvers on dwave-samplers: tabu search and simulated annealing.

Both sample the penalised BQM ``E(x) + λ(Σx − M)²`` over the free blocks (protected and forced
blocks are fixed out), with λ from the energy scale, doubled while fewer than half the samples are
feasible. Every sample is then repaired to exactly M removed (greedy add/drop) and polished by a
swap local search that keeps the count; the best ones are grown by their swap neighbours into a
top-K list. Only feasible configurations come out. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from ..errors import BlockPruneError
from ..problem import Problem
from .registry import check_options, check_top_k, make_sampleset

PENALTY_TRIES = 6


def penalty_scale(h: np.ndarray, J: np.ndarray, k: int) -> float:
    """Largest change of ``h·x + xᵀJx`` from flipping one block next to a k-block configuration."""
    off = 2 * np.abs(J - np.diag(np.diag(J)))
    near = -np.sort(-off, axis=1)[:, :k].sum(axis=1)
    scale = float(np.max(np.abs(h + np.diag(J)) + near, initial=0.0))
    return scale if scale > 0 else 1.0


def penalised_bqm(h: np.ndarray, J: np.ndarray, k: int, strength: float) -> dimod.BinaryQuadraticModel:
    """QUBO of ``h·x + xᵀJx + strength·(Σx − k)²`` over variables 0..n-1."""
    n = len(h)
    linear = h + np.diag(J) + strength * (1 - 2 * k)
    quad = np.triu(2 * J + 2 * strength, k=1)
    rows, cols = np.triu_indices(n, k=1)
    return dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (rows, cols, quad[rows, cols]), strength * k * k, "BINARY"
    )


def _couplings(h: np.ndarray, J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(single-block costs ``a``, pair costs ``B`` with zero diagonal) of the same energy."""
    return h + np.diag(J), 2 * J - 2 * np.diag(np.diag(J))


def repair(Y: np.ndarray, h: np.ndarray, J: np.ndarray, k: int) -> np.ndarray:
    """Greedily drop (add) the block that lowers (raises least) the energy until each row has k ones."""
    Y = np.array(Y, dtype=np.int8)
    a, B = _couplings(h, J)
    gain = a + Y @ B  # energy change of adding block j (minus the change of dropping it)
    rows = np.arange(len(Y))
    while True:
        count = Y.sum(axis=1)
        over, under = count > k, count < k
        if not (over.any() or under.any()):
            return Y
        masked = np.where(Y == 1, -gain, gain)  # cost of toggling each block
        masked[over[:, None] & (Y == 0)] = np.inf
        masked[under[:, None] & (Y == 1)] = np.inf
        masked[~(over | under)] = np.inf
        pick = np.argmin(masked, axis=1)
        move = rows[over | under]
        sign = np.where(Y[move, pick[move]] == 1, -1, 1)
        Y[move, pick[move]] += sign.astype(np.int8)
        gain[move] += sign[:, None] * B[pick[move]]


def _swaps(Y: np.ndarray, gain: np.ndarray, B: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Removed blocks (R, k), kept blocks (R, n-k) and energy changes (R, k, n-k) of every 1-swap."""
    order = np.argsort(-Y, axis=1, kind="stable")
    out, inn = order[:, :k], order[:, k:]
    g_out = np.take_along_axis(gain, out, axis=1)
    g_in = np.take_along_axis(gain, inn, axis=1)
    return out, inn, g_in[:, None, :] - g_out[:, :, None] - B[out[:, :, None], inn[:, None, :]]


def swap_descent(Y: np.ndarray, h: np.ndarray, J: np.ndarray, max_steps: int = 10_000) -> np.ndarray:
    """Steepest-descent 1-swap local search (one block out, one in) on rows with equal counts."""
    Y = np.array(Y, dtype=np.int8)
    n = Y.shape[1]
    k = int(Y[0].sum()) if len(Y) else 0
    if k in (0, n):
        return Y
    a, B = _couplings(h, J)
    gain = a + Y @ B  # energy change of adding block j (minus the change of dropping it)
    rows = np.arange(len(Y))
    tol = 1e-12 * max(1.0, float(np.abs(B).max(initial=0.0)), float(np.abs(a).max(initial=0.0)))
    for _ in range(max_steps):
        out, inn, delta = _swaps(Y, gain, B, k)
        flat = delta.reshape(len(Y), -1)
        best = np.argmin(flat, axis=1)
        improve = flat[rows, best] < -tol
        if not improve.any():
            break
        r = rows[improve]
        i = out[r, best[improve] // (n - k)]
        j = inn[r, best[improve] % (n - k)]
        Y[r, i], Y[r, j] = 0, 1
        gain[r] += B[j] - B[i]
    return Y


def _energies(Y: np.ndarray, a: np.ndarray, B: np.ndarray) -> np.ndarray:
    return Y @ a + np.einsum("ri,ij,rj->r", Y, B, Y, optimize=True) / 2


def swap_neighbours(Y: np.ndarray, h: np.ndarray, J: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lowest-energy 1-swap neighbours of the rows of Y."""
    Y = np.asarray(Y, dtype=np.int8)
    n = Y.shape[1]
    k = int(Y[0].sum())
    if k in (0, n):
        return Y[:0]
    a, B = _couplings(h, J)
    out, inn, delta = _swaps(Y, a + Y @ B, B, k)
    flat = (_energies(Y, a, B)[:, None, None] + delta).ravel()
    pick = np.argpartition(flat, count - 1)[:count] if len(flat) > count else np.arange(len(flat))
    r, rest = np.divmod(pick, k * (n - k))
    i, j = out[r, rest // (n - k)], inn[r, rest % (n - k)]
    N = Y[r].copy()
    N[np.arange(len(r)), i], N[np.arange(len(r)), j] = 0, 1
    return N


def low_states(Y: np.ndarray, h: np.ndarray, J: np.ndarray, top_k: int, rounds: int = 20) -> np.ndarray:
    """Best ``top_k`` distinct rows of Y, grown by 1-swap neighbours until that set stops changing."""
    a, B = _couplings(h, J)
    best = np.unique(np.asarray(Y, dtype=np.int8), axis=0)
    best = best[np.argsort(_energies(best, a, B), kind="stable")[:top_k]]
    for _ in range(rounds):
        pool = np.unique(np.concatenate([best, swap_neighbours(best, h, J, top_k)]), axis=0)
        pool = pool[np.argsort(_energies(pool, a, B), kind="stable")[:top_k]]
        if len(pool) == len(best) and (pool == best).all():
            break
        best = pool
    return best


class _DwaveSolver:
    """Shared pipeline: sample the penalised BQM, repair, polish, keep the top_k distinct ones."""

    name = ""
    options: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}
    penalty_start = 1.0  # times penalty_scale(); doubled while fewer than half the samples are feasible

    def _run(self, bqm: dimod.BinaryQuadraticModel, k: int, **kwargs: Any) -> dimod.SampleSet:
        raise NotImplementedError

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        check_options(self.name, options, self.options)
        top_k = check_top_k(top_k)
        started = time.perf_counter()
        _, h, J = problem.reduced()
        k, n = problem.free_remove, len(h)
        kwargs = {**self.defaults, **options}
        if int(kwargs.get("num_reads", 1)) < 1:
            raise BlockPruneError(f"num_reads must be at least 1; got {kwargs['num_reads']!r}")
        strength = kwargs.pop("penalty", None)
        tries = 1 if strength is not None else PENALTY_TRIES
        strength = float(strength) if strength is not None else self.penalty_start * penalty_scale(h, J, k)
        if k in (0, n):
            Y = np.full((1, n), 1 if k else 0, dtype=np.int8)
            feasible_fraction = 1.0
        else:
            for attempt in range(tries):
                raw = self._run(penalised_bqm(h, J, k, strength), k, **kwargs)
                Y = raw.record.sample[:, np.argsort(list(raw.variables))].astype(np.int8)
                feasible_fraction = float(np.mean(Y.sum(axis=1) == k))
                if feasible_fraction >= 0.5 or attempt == tries - 1:
                    break
                strength *= 2
            Y = swap_descent(repair(Y, h, J, k), h, J)
            Y = low_states(Y, h, J, top_k)
        return make_sampleset(
            problem,
            problem.expand(Y),
            top_k,
            started,
            solver=self.name,
            penalty=strength,
            feasible_fraction=feasible_fraction,
        )


class TabuSolver(_DwaveSolver):
    """dwave-samplers TabuSampler, deterministic: no timeout, bounded restarts, fixed seed."""

    name = "tabu"
    options = ("seed", "num_reads", "num_restarts", "tenure", "penalty", "lower_bound_z")
    defaults = {"seed": 0, "num_reads": 16, "num_restarts": 10, "timeout": None, "lower_bound_z": 20_000}

    def _run(self, bqm: dimod.BinaryQuadraticModel, k: int, **kwargs: Any) -> dimod.SampleSet:
        from dwave.samplers import TabuSampler

        # each read starts from a random configuration that removes exactly k blocks
        n, reads = bqm.num_variables, kwargs["num_reads"]
        order = np.argsort(np.random.default_rng(kwargs["seed"]).random((reads, n)), axis=1)
        starts = np.zeros((reads, n), dtype=np.int8)
        np.put_along_axis(starts, order[:, :k], 1, axis=1)
        return TabuSampler().sample(bqm, initial_states=(starts, list(range(n))), **kwargs)


class SimulatedAnnealingSolver(_DwaveSolver):
    """dwave-samplers SimulatedAnnealingSampler with a fixed seed."""

    name = "sa"
    options = ("seed", "num_reads", "num_sweeps", "beta_range", "penalty")
    defaults = {"seed": 0, "num_reads": 32, "num_sweeps": 1000}
    penalty_start = 1 / 32  # a strong penalty freezes the annealer; a weak one is repaired

    def _run(self, bqm: dimod.BinaryQuadraticModel, k: int, **kwargs: Any) -> dimod.SampleSet:
        from dwave.samplers import SimulatedAnnealingSampler

        return SimulatedAnnealingSampler().sample(bqm, **kwargs)
