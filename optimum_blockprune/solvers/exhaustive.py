"""Exact solver: enumerate every feasible configuration, vectorised, keeping the exact top-K.

A configuration of K free blocks is split into a head (its K1 lowest indices, largest one ``p``) and
a tail (the remaining K2 = K - K1 indices, all above ``p``). For each ``p``, the energies of all
head x tail pairs are one matrix product: ``E = e_head + e_tail + 2 U J Wᵀ`` (U, W indicator rows).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import dimod
import numpy as np

from ..errors import BlockPruneError
from ..problem import Problem
from .registry import check_options, check_top_k, make_sampleset

DEFAULT_LIMIT = 50_000_000
BLOCK = 4096  # energies per matrix product: small enough that BLAS stays single-threaded (fast on busy CPUs)


def _combinations(values: range, k: int) -> np.ndarray:
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


class _TopK:
    """Running exact top-k of (energy, head row, tail row) triples; blocks are pre-filtered by the k-th best."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.threshold = np.inf
        self.energy = np.empty(0)
        self.rows = np.empty((0, 0), dtype=np.intp)

    def add(self, energies: np.ndarray, heads: np.ndarray, tails: np.ndarray) -> None:
        flat = energies.ravel()
        pick = np.flatnonzero(flat < self.threshold)
        if len(pick) > self.k:
            pick = pick[np.argpartition(flat[pick], self.k - 1)[: self.k]]
        if not len(pick):
            return
        r, c = np.divmod(pick, energies.shape[1])
        rows = np.concatenate([heads[r], tails[c]], axis=1)
        energy = np.concatenate([self.energy, flat[pick]])
        rows = np.concatenate([self.rows, rows]) if len(self.rows) else rows
        keep = np.argsort(energy, kind="stable")[: self.k]
        self.energy, self.rows = energy[keep], rows[keep]
        if len(self.energy) == self.k:
            self.threshold = self.energy[-1]


def top_configurations(h: np.ndarray, J: np.ndarray, k: int, top_k: int) -> np.ndarray:
    """Index rows (≤ top_k, k) of the k-subsets with the lowest ``h·x + xᵀJx`` (J symmetric)."""
    n = len(h)
    if k == 0:
        return np.zeros((1, 0), dtype=np.intp)
    k1 = (k + 1) // 2
    k2 = k - k1
    tails = _combinations(range(n), k2)  # lexicographic: those above p are a suffix
    tail_energy, _ = _quadratic(tails, h, J)
    first = np.searchsorted(tails[:, 0], np.arange(n + 1)) if k2 else np.zeros(n + 1, dtype=np.intp)
    best = _TopK(top_k)
    for p in range(k1 - 1, n - k2):
        heads = np.column_stack([_combinations(range(p), k1 - 1), np.full(math.comb(p, k1 - 1), p)])
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
                best.add(left[lo : lo + step] @ right, heads[lo : lo + step], tail_rows)
    return best.rows


class ExhaustiveSolver:
    """Exact: enumerates all C(free, M - forced) configurations (refuses above ``limit``)."""

    name = "exhaustive"
    options = ("limit", "seed")

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        check_options(self.name, options, self.options)
        top_k = check_top_k(top_k)
        limit = int(options.get("limit", DEFAULT_LIMIT))
        count = problem.num_configurations
        if count > limit:
            raise BlockPruneError(
                f"exhaustive search would enumerate {count:,} configurations (limit {limit:,}); "
                f"use --solver tabu, or raise the limit option"
            )
        started = time.perf_counter()
        _, h, J = problem.reduced()
        rows = top_configurations(h, J, problem.free_remove, top_k)
        Y = np.zeros((len(rows), len(h)), dtype=np.int8)
        np.put_along_axis(Y, rows, 1, axis=1)
        result = make_sampleset(problem, problem.expand(Y), top_k, started, solver=self.name)
        result.info.update(
            optimal=True, lower_bound=float(result.first.energy), gap=0.0, num_configurations=count
        )
        return result
