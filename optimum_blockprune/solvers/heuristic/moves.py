"""Local moves that keep a problem's constraints: repair to feasibility, descent, top-K growth.

Works on the reduced energy over the free blocks, ``E(y) = a·y + ½ yᵀBy`` (``a = h + diag J``,
``B = 2J`` off the diagonal). Moves: a swap (one block out, one in) inside a count group, and,
where a group has no count (budget only), adding or dropping one block; a move is allowed only
when the parameter budget still holds afterwards. Everything is vectorised over rows.
"""

from __future__ import annotations

import numpy as np

from optimum_blockprune.solvers.problem import Problem


class Moves:
    """Feasibility-keeping local search for one problem (over its free blocks)."""

    def __init__(self, problem: Problem, h: np.ndarray | None = None, J: np.ndarray | None = None) -> None:
        if h is None or J is None:
            _, h, J = problem.reduced()
        self.problem = problem
        self.n = n = len(h)
        self.a = h + np.diag(J)
        self.B = 2 * J - 2 * np.diag(np.diag(J))
        self.group = np.full(n, -1, dtype=np.intp)
        self.count = []
        for g, (members, count) in enumerate(problem.groups):
            self.group[members] = g
            self.count.append(count)
        self.free_count = np.array([self.count[g] is None for g in self.group], dtype=bool)
        self.same = self.group[:, None] == self.group[None, :]
        budget = problem.budget
        self.w = budget[0].astype(np.float64) if budget is not None else np.zeros(n)
        self.rhs = float(budget[1]) if budget is not None else -np.inf
        scale = max(1.0, float(np.abs(self.B).max(initial=0.0)), float(np.abs(self.a).max(initial=0.0)))
        self.tol = 1e-12 * scale

    # ------------------------------------------------------------------ energies
    def energies(self, Y: np.ndarray) -> np.ndarray:
        Y = np.asarray(Y, dtype=np.float64)
        return Y @ self.a + np.einsum("ri,ij,rj->r", Y, self.B, Y, optimize=True) / 2

    def _gain(self, Y: np.ndarray) -> np.ndarray:
        """Energy change of adding each block (minus the change of dropping it), per row."""
        return self.a + Y @ self.B

    # ------------------------------------------------------------------ moves
    def _deltas(self, Y: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Energy changes of every allowed move: swaps (R, n, n) out i / in j, adds (R, n), drops
        (R, n); disallowed moves are +inf."""
        on = Y == 1
        W = Y @ self.w
        swap = gain[:, None, :] - gain[:, :, None] - self.B[None]
        ok = on[:, :, None] & ~on[:, None, :] & self.same[None]
        if self.rhs > -np.inf:
            ok &= (W[:, None, None] - self.w[None, :, None] + self.w[None, None, :]) >= self.rhs
        swap = np.where(ok, swap, np.inf)
        add = np.where(~on & self.free_count, gain, np.inf)
        drop_ok = on & self.free_count
        if self.rhs > -np.inf:
            drop_ok &= (W[:, None] - self.w[None, :]) >= self.rhs
        drop = np.where(drop_ok, -gain, np.inf)
        return swap, add, drop

    def _apply(self, Y: np.ndarray, gain: np.ndarray, rows: np.ndarray, moves: np.ndarray) -> None:
        """Apply flat move indices (into [swaps | adds | drops]) to the given rows, in place."""
        n = self.n
        for r, m in zip(rows.tolist(), moves.tolist(), strict=True):
            if m < n * n:
                i, j = divmod(m, n)
                Y[r, i], Y[r, j] = 0, 1
                gain[r] += self.B[j] - self.B[i]
            elif m < n * n + n:
                j = m - n * n
                Y[r, j] = 1
                gain[r] += self.B[j]
            else:
                i = m - n * n - n
                Y[r, i] = 0
                gain[r] -= self.B[i]

    def _flat(self, Y: np.ndarray, gain: np.ndarray) -> np.ndarray:
        swap, add, drop = self._deltas(Y, gain)
        return np.concatenate([swap.reshape(len(Y), -1), add, drop], axis=1)

    def descend(self, Y: np.ndarray, max_steps: int = 10_000) -> np.ndarray:
        """Steepest descent over the allowed moves, until no move lowers the energy."""
        Y = np.array(Y, dtype=np.float64).reshape(-1, self.n)
        if not len(Y) or not self.n:
            return Y.astype(np.int8)
        gain = self._gain(Y)
        active = np.arange(len(Y))
        for _ in range(max_steps):
            flat = self._flat(Y[active], gain[active])
            best = np.argmin(flat, axis=1)
            improve = flat[np.arange(len(active)), best] < -self.tol
            if not improve.any():
                break
            self._apply(Y, gain, active[improve], best[improve])
            active = active[improve]
        return Y.astype(np.int8)

    def neighbours(self, Y: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` lowest-energy one-move neighbours of the rows of Y (all feasible if Y is)."""
        Y = np.asarray(Y, dtype=np.float64).reshape(-1, self.n)
        if not len(Y) or not self.n:
            return Y[:0].astype(np.int8)
        gain = self._gain(Y)
        flat = self.energies(Y)[:, None] + self._flat(Y, gain)
        finite = np.flatnonzero(np.isfinite(flat.ravel()))
        if not len(finite):
            return Y[:0].astype(np.int8)
        values = flat.ravel()[finite]
        if len(finite) > count:
            finite = finite[np.argpartition(values, count - 1)[:count]]
        rows, moves = np.divmod(finite, flat.shape[1])
        N = Y[rows].copy()
        self._apply(N, gain[rows].copy(), np.arange(len(rows)), moves)
        return N.astype(np.int8)

    def low_states(self, Y: np.ndarray, top_k: int, rounds: int = 20) -> np.ndarray:
        """Best ``top_k`` distinct rows of Y, grown by one-move neighbours until the set stops changing."""
        best = np.unique(np.asarray(Y, dtype=np.int8).reshape(-1, self.n), axis=0)
        best = best[np.argsort(self.energies(best), kind="stable")[:top_k]]
        for _ in range(rounds):
            pool = np.unique(np.concatenate([best, self.neighbours(best, top_k)]), axis=0)
            pool = pool[np.argsort(self.energies(pool), kind="stable")[:top_k]]
            if len(pool) == len(best) and (pool == best).all():
                break
            best = pool
        return best

    # ------------------------------------------------------------------ repair
    def repair(self, Y: np.ndarray) -> np.ndarray:
        """Rows made feasible: counts first (greedy cheapest drop / add in each wrong group), then
        the budget (cheapest energy per parameter gained: add a block, or swap a small one for a
        larger one in its group)."""
        Y = np.array(Y, dtype=np.float64).reshape(-1, self.n)
        if not len(Y) or not self.n:
            return Y.astype(np.int8)
        gain = self._gain(Y)
        rows = np.arange(len(Y))
        target = np.array([-1 if c is None else c for c in self.count], dtype=np.int64)
        counted = target >= 0
        onehot = np.zeros((self.n, len(self.count)))
        onehot[np.arange(self.n), self.group] = 1
        for _ in range(2 * self.n + 1):
            have = Y @ onehot  # (R, groups)
            over = (have > target) & counted
            under = (have < target) & counted
            bad = over.any(axis=1) | under.any(axis=1)
            if not bad.any():
                break
            over_b, under_b = over[:, self.group], under[:, self.group]  # per block
            cost = np.full(Y.shape, np.inf)
            cost = np.where(over_b & (Y == 1), -gain, cost)
            cost = np.where(under_b & (Y == 0), gain, cost)
            pick = np.argmin(cost, axis=1)
            move = rows[bad]
            sign = np.where(Y[move, pick[move]] == 1, -1.0, 1.0)
            Y[move, pick[move]] += sign
            gain[move] += sign[:, None] * self.B[pick[move]]
        if self.rhs > -np.inf:
            for _ in range(self.n * self.n + 1):
                W = Y @ self.w
                short = W < self.rhs
                if not short.any():
                    break
                r = rows[short]
                swap, add, _ = self._deltas_unchecked(Y[r], gain[r])
                deficit = (self.rhs - W[r])[:, None, None]
                gained = self.w[None, None, :] - self.w[None, :, None]
                score_swap = np.where(gained > 0, _per_unit(swap, np.minimum(gained, deficit)), np.inf)
                score_add = _per_unit(add, np.minimum(self.w[None, :], deficit[:, 0]))
                score_add = np.where(self.w[None, :] > 0, score_add, np.inf)
                flat = np.concatenate(
                    [score_swap.reshape(len(r), -1), score_add, np.full(add.shape, np.inf)], 1
                )
                self._apply(Y, gain, r, np.argmin(flat, axis=1))
        return Y.astype(np.int8)

    def _deltas_unchecked(self, Y: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        """Swap and add energy changes ignoring the budget (for moves that raise it)."""
        on = Y == 1
        swap = gain[:, None, :] - gain[:, :, None] - self.B[None]
        swap = np.where(on[:, :, None] & ~on[:, None, :] & self.same[None], swap, np.inf)
        add = np.where(~on & self.free_count, gain, np.inf)
        return swap, add, None


def _per_unit(delta: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Energy change per unit of budget gained (units > 0 where it matters)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return delta / np.maximum(units, 1e-300)
