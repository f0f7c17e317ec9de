"""The space a branch-and-bound search explores: the problem reduced to its free blocks (energy
``offset + hᵀy + yᵀJy``, count groups, parameter budget) and what holds over a node, the box
``lo <= y <= hi``. The search (:mod:`.bnb`) and its bounds (:mod:`.bounds`) both read it."""

from __future__ import annotations

import math

import numpy as np

from optimum_blockprune.solvers.problem import Problem


class NodeSpace:
    """The reduced problem and its node structure (counts, budget, completions)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.offset, self.h, self.J = problem.reduced()
        self.n = n = len(self.h)
        self.group = np.full(n, -1, dtype=np.intp)
        self.counts: list[int | None] = []
        for gi, (members, count) in enumerate(problem.groups):
            self.group[members] = gi
            self.counts.append(count)
        budget = problem.budget
        self.w = budget[0].astype(np.float64) if budget is not None else None
        self.b = float(budget[1]) if budget is not None else 0.0
        if self.w is not None and self.b <= 0:
            self.w = None  # the forced blocks already meet the budget

    def energies(self, Y: np.ndarray) -> np.ndarray:
        Y = np.asarray(Y, dtype=np.float64)
        return self.offset + Y @ self.h + ((Y @ self.J) * Y).sum(axis=1)

    def remaining(self, lo: np.ndarray, num_free: int) -> int:
        """Fewest free blocks any completion of the node removes."""
        total = 0
        for gi, count in enumerate(self.counts):
            if count is not None:
                total += int(round(count - lo[self.group == gi].sum()))
        return min(total, num_free)

    def feasible(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        """Whether some completion of the node meets the counts and the budget."""
        for gi, count in enumerate(self.counts):
            m = self.group == gi
            if count is not None and (lo[m].sum() > count + 0.5 or hi[m].sum() < count - 0.5):
                return False
        return self.w is None or self._max_weight(lo, hi) >= self.b - 0.5

    def _max_weight(self, lo: np.ndarray, hi: np.ndarray) -> float:
        total = float(self.w @ lo)
        free = lo < hi
        for gi, count in enumerate(self.counts):
            m = np.flatnonzero((self.group == gi) & free)
            if count is None:
                total += float(self.w[m].sum())
            else:
                need = int(round(count - lo[self.group == gi].sum()))
                total += float(np.sort(self.w[m])[::-1][:need].sum())
        return total

    def completions(self, lo: np.ndarray, hi: np.ndarray) -> int:
        """Number of completions that meet the counts (budget-only groups: every subset)."""
        total = 1
        free = lo < hi
        for gi, count in enumerate(self.counts):
            size = int(((self.group == gi) & free).sum())
            if count is None:
                total *= 2**size
            else:
                total *= math.comb(size, int(round(count - lo[self.group == gi].sum())))
        return total

    def enumerate(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Every completion of the node that meets the counts (the budget is checked by offer())."""
        from optimum_blockprune.solvers.exact.exhaustive import combinations

        rows = lo[None, :].astype(np.int8)
        free = lo < hi
        for gi, count in enumerate(self.counts):
            m = np.flatnonzero((self.group == gi) & free)
            sizes = range(len(m) + 1) if count is None else [int(round(count - lo[self.group == gi].sum()))]
            parts = []
            for c in sizes:
                combos = combinations(range(len(m)), c)
                sub = np.zeros((len(combos), self.n), dtype=np.int8)
                if c:
                    np.put_along_axis(sub, m[combos], 1, axis=1)
                parts.append(sub)
            sub = np.concatenate(parts)
            rows = (rows[:, None, :] + sub[None, :, :]).reshape(-1, self.n)
        return rows
