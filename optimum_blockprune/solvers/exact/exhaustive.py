"""Exact solver: enumerate every feasible configuration, vectorised, keeping the exact top-K.

Exactly K of the free blocks: a configuration is split into a head (its K1 lowest indices, largest
one ``p``) and a tail (the remaining K2 = K - K1 indices, all above ``p``). For each ``p``, the
energies of all head x tail pairs are one matrix product: ``E = e_head + e_tail + 2 U J Wᵀ``
(U, W indicator rows).

Per-kind counts and parameter budgets: the free blocks are split into a left and a right half;
for every way of sharing each group's count between the halves, all left x right pairs are one
matrix product the same way, and pairs below the budget are masked out. With a budget and no
counts every subset with enough blocks to reach it is enumerated (the size guard counts them).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import dimod
import numpy as np

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers.base import Solver, make_sampleset
from optimum_blockprune.solvers.exact.topk import TopK
from optimum_blockprune.solvers.problem import Problem, min_blocks

DEFAULT_LIMIT = 50_000_000
BLOCK = 4096  # energies per matrix product: small enough that BLAS stays single-threaded (fast on busy CPUs)


def combinations(values: range, k: int) -> np.ndarray:
    """All k-subsets of ``values`` in lexicographic order, as a (C, k) index array."""
    count = math.comb(len(values), k)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(values, k)), np.intp, count * k)
    return flat.reshape(count, k)


def _indicator(rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(rows), n))
    np.put_along_axis(out, rows, 1.0, axis=1)
    return out


def _quadratic(rows: np.ndarray, h: np.ndarray, J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies ``h·u + uᵀJu`` of the subsets given as index rows, and their cross terms ``2 uᵀJ``."""
    UJ = np.zeros((len(rows), len(h)))
    for column in rows.T:  # one gather per member keeps memory at (rows, n)
        UJ += J[column]
    return h[rows].sum(axis=1) + np.take_along_axis(UJ, rows, axis=1).sum(axis=1), 2 * UJ


def _concat(heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    return np.concatenate([heads, tails], axis=1)


def top_configurations(h: np.ndarray, J: np.ndarray, k: int, top_k: int) -> np.ndarray:
    """Index rows (≤ top_k, k) of the k-subsets with the lowest ``h·x + xᵀJx`` (J symmetric)."""
    n = len(h)
    if k == 0:
        return np.zeros((1, 0), dtype=np.intp)
    k1 = (k + 1) // 2
    k2 = k - k1
    tails = combinations(range(n), k2)  # lexicographic: those above p are a suffix
    tail_energy, _ = _quadratic(tails, h, J)
    first = np.searchsorted(tails[:, 0], np.arange(n + 1)) if k2 else np.zeros(n + 1, dtype=np.intp)
    best = TopK(top_k, k, dtype=np.intp)
    for p in range(k1 - 1, n - k2):
        heads = np.column_stack([combinations(range(p), k1 - 1), np.full(math.comb(p, k1 - 1), p)])
        e, cross = _quadratic(heads, h, J)
        # E = [2UJ | e_head | 1] @ [W; 1; e_tail]: cross terms and both partial energies in one product
        left = np.column_stack([cross[:, p + 1 :], e, np.ones(len(heads))])
        for t0 in range(first[p + 1], len(tails), BLOCK):
            tail_rows = tails[t0 : t0 + BLOCK]
            right = np.vstack(
                [
                    _indicator(tail_rows, n)[:, p + 1 :].T,
                    np.ones(len(tail_rows)),
                    tail_energy[t0 : t0 + BLOCK],
                ]
            )
            step = max(1, BLOCK // len(tail_rows))
            for lo in range(0, len(heads), step):
                best.add_pairs(left[lo : lo + step] @ right, heads[lo : lo + step], tail_rows, _concat)
    return best.rows


def _group_rows(choices: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """0/1 rows over n blocks: every product of a c-subset of each (members, c)."""
    rows = np.zeros((1, n), dtype=np.int8)
    for members, c in choices:
        combos = combinations(range(len(members)), c)
        sub = np.zeros((len(combos), n), dtype=np.int8)
        if c:
            np.put_along_axis(sub, members[combos], 1, axis=1)
        rows = (rows[:, None, :] + sub[None, :, :]).reshape(-1, n)
    return rows


def _count_vectors(problem: Problem) -> list[list[int]]:
    """Every assignment of a count to each group (budget-only: enough blocks to reach it)."""
    options = []
    for members, count in problem.groups:
        if count is None:
            weights, rhs = problem.budget
            options.append(list(range(min_blocks(weights, rhs), len(members) + 1)))
        else:
            options.append([count])
    return [list(v) for v in itertools.product(*options)]


def top_rows(problem: Problem, h: np.ndarray, J: np.ndarray, top_k: int) -> np.ndarray:
    """(≤ top_k, free) 0/1 rows of the lowest ``h·y + yᵀJy`` meeting every constraint."""
    n = len(h)
    half = n // 2
    budget = problem.budget
    w = budget[0].astype(np.float64) if budget is not None else np.zeros(n)
    rhs = float(budget[1]) if budget is not None else -np.inf
    best = TopK(top_k, n)
    sides = [(np.arange(n) < half), (np.arange(n) >= half)]
    for counts in _count_vectors(problem):
        members = [m for m, _ in problem.groups]
        left_members = [m[sides[0][m]] for m in members]
        right_members = [m[sides[1][m]] for m in members]
        splits = [
            range(max(0, k - len(rm)), min(k, len(lm)) + 1)
            for k, lm, rm in zip(counts, left_members, right_members, strict=True)
        ]
        for split in itertools.product(*splits):
            left = _group_rows(list(zip(left_members, split, strict=True)), n)
            right = _group_rows(
                [(rm, k - c) for rm, k, c in zip(right_members, counts, split, strict=True)], n
            )
            _pairs(best, left, right, h, J, w, rhs)
    return best.rows


def _pairs(
    best: TopK,
    left: np.ndarray,
    right: np.ndarray,
    h: np.ndarray,
    J: np.ndarray,
    w: np.ndarray,
    rhs: float,
) -> None:
    """Offer every left x right pair (disjoint supports) to ``best``, in blocks of about BLOCK energies."""
    L, R = left.astype(np.float64), right.astype(np.float64)
    e_left = L @ h + np.einsum("ri,ij,rj->r", L, J, L, optimize=True)
    e_right = R @ h + np.einsum("ri,ij,rj->r", R, J, R, optimize=True)
    w_left, w_right = L @ w, R @ w
    cross = 2 * L @ J
    step_r = min(len(R), BLOCK)
    step_l = max(1, BLOCK // step_r)
    for r0 in range(0, len(R), step_r):
        Rb = R[r0 : r0 + step_r]
        for l0 in range(0, len(L), step_l):
            E = (
                cross[l0 : l0 + step_l] @ Rb.T
                + e_left[l0 : l0 + step_l, None]
                + e_right[None, r0 : r0 + step_r]
            )
            if rhs > -np.inf:
                short = w_left[l0 : l0 + step_l, None] + w_right[None, r0 : r0 + step_r] < rhs
                E = np.where(short, np.inf, E)
            best.add_pairs(E, left[l0 : l0 + step_l], right[r0 : r0 + step_r], np.add)


class ExhaustiveSolver(Solver):
    """Exact: enumerates every feasible configuration (refuses above ``limit``; with a budget the
    count is of the configurations enumerated, an upper bound on the feasible ones)."""

    name = "exhaustive"
    options = ("limit", "seed")

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        top_k, started = self.begin(top_k, options)
        limit = int(options.get("limit", DEFAULT_LIMIT))
        count = problem.num_configurations
        if count > limit:
            raise BlockPruneError(
                f"exhaustive search would enumerate {count:,} configurations (limit {limit:,}); "
                f"use --solver tabu, or raise the limit option"
            )
        started = time.perf_counter()
        _, h, J = problem.reduced()
        if len(problem.groups) == 1 and problem.budget is None:  # exactly K of the free blocks
            rows = top_configurations(h, J, problem.free_remove, top_k)
            Y = np.zeros((len(rows), len(h)), dtype=np.int8)
            np.put_along_axis(Y, rows, 1, axis=1)
        else:
            Y = top_rows(problem, h, J, top_k)
        result = make_sampleset(problem, problem.expand(Y), top_k, started, solver=self.name)
        result.info.update(
            optimal=True, lower_bound=float(result.first.energy), gap=0.0, num_configurations=count
        )
        return result
