"""Convex QP over a branch-and-bound node, and a lower bound that is valid however it stops.

``min ½ yᵀGy + gᵀy`` with G positive semi-definite, over the node polytope: the box with some
blocks fixed to 0 or 1, and ``Σ_{i∈g} y_i = k_g`` for every count group. The solver is a
primal-dual active-set method (a few Newton steps from a warm start), with a primal active-set
method from the projection of the start as fallback. The bound is the Frank-Wolfe
(linearisation) bound ``f(ȳ) + min_{s ∈ polytope} ∇f(ȳ)ᵀ(s − ȳ)``, which holds for ANY ȳ by
convexity, so an early stop only weakens it; the minimising vertex s is a binary point that
meets the counts (a candidate configuration).
"""

from __future__ import annotations

import numpy as np

FALLBACK_ITERATIONS = 30  # active-set steps after a failed PDAS (the bound is valid anyway)


class NodeQP:
    """The QP data shared by every node: ``G``, ``g`` and the count groups."""

    def __init__(self, G: np.ndarray, g: np.ndarray, group: np.ndarray, counts: list[int | None]) -> None:
        self.G, self.g = G, g
        self.n = len(g)
        self.group = group  # group index of each variable
        self.counts = counts  # count of each group, None = any number
        self.num_groups = len(counts)
        self.counted = np.array([c is not None for c in counts], dtype=bool)
        self.target = np.array([0 if c is None else c for c in counts], dtype=np.float64)
        rows = np.flatnonzero(self.counted)
        self.E = (group[None, :] == rows[:, None]).astype(np.float64)  # count constraints, (rows, n)
        self.E_rows = rows
        self.c = max(1e-300, float(np.abs(np.diag(G)).mean())) if len(G) else 1.0
        self.stats = {"pdas": 0, "fallback": 0, "iterations": 0}

    # ------------------------------------------------------------------ geometry
    def project(self, z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Euclidean projection of z onto the box [lo, hi] with the group sums."""
        y = np.clip(z, lo, hi)
        for gi in np.flatnonzero(self.counted):
            m = np.flatnonzero(self.group == gi)
            y[m] = project_capped_simplex(z[m], lo[m], hi[m], self.target[gi])
        return y

    def vertex(self, grad: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Binary minimiser of ``gradᵀs`` over the node polytope (its vertices are binary)."""
        s = lo.copy()
        free = lo < hi
        for gi in range(self.num_groups):
            m = np.flatnonzero((self.group == gi) & free)
            if not len(m):
                continue
            if self.counted[gi]:
                need = int(round(self.target[gi] - lo[self.group == gi].sum()))
                if need > 0:
                    pick = m[np.argpartition(grad[m], need - 1)[:need]] if need < len(m) else m
                    s[pick] = 1.0
            else:
                s[m[grad[m] < 0]] = 1.0
        return s

    # ------------------------------------------------------------------ value and bound
    def bound(
        self, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, g: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """(valid lower bound of the QP over the node polytope, the binary vertex that attains it)."""
        g = self.g if g is None else g
        Gy = self.G @ y
        grad = Gy + g
        s = self.vertex(grad, lo, hi)
        return float(0.5 * y @ Gy + g @ y) + float(grad @ (s - y)), s

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        start: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        g: np.ndarray | None = None,
        max_iter: int = FALLBACK_ITERATIONS,
    ) -> tuple[np.ndarray, int]:
        """Approximate minimiser (feasible for the node polytope) and the iterations used: a
        primal-dual active-set method (few iterations from a warm start), falling back to the
        primal active-set method when it does not settle."""
        g = self.g if g is None else g
        y = self.pdas(start, lo, hi, g)
        if y is not None:
            self.stats["pdas"] += 1
            return y, 0
        self.stats["fallback"] += 1
        return self.active_set(start, lo, hi, g, max_iter)

    def pdas(self, start: np.ndarray, lo: np.ndarray, hi: np.ndarray, g: np.ndarray, max_iter: int = 12):
        """Primal-dual active set (semismooth Newton) on the bounds; None when it does not settle
        on a feasible KKT point."""
        fixed = lo == hi
        y = np.clip(start, lo, hi)
        E = self.E
        grad = self.G @ y + g
        free = ~fixed & (y > lo + 1e-9) & (y < hi - 1e-9)
        nu = np.zeros(len(self.E_rows))
        for r, gi in enumerate(self.E_rows):
            m = free & (self.group == gi)
            if m.any():
                nu[r] = -grad[m].mean()
        mu = grad + E.T @ nu
        prev = None
        for _ in range(max_iter):
            self.stats["iterations"] += 1
            act_lo = fixed | (mu + self.c * (lo - y) > 0)
            act_hi = ~act_lo & (-mu + self.c * (y - hi) > 0)
            key = (act_lo.tobytes(), act_hi.tobytes())
            if key == prev:
                break
            prev = key
            inactive = np.flatnonzero(~(act_lo | act_hi))
            yA = np.where(act_lo, lo, np.where(act_hi, hi, 0.0))
            EI = E[:, inactive]
            keep = EI.any(axis=1)
            EI = EI[keep]
            rhs_c = (self.target[self.E_rows] - E @ yA)[keep]
            if (~keep).any() and np.abs((self.target[self.E_rows] - E @ yA)[~keep]).max() > 1e-9:
                return None  # a group with no inactive variable but the wrong sum
            k = len(inactive)
            K = np.zeros((k + len(EI), k + len(EI)))
            K[:k, :k] = self.G[np.ix_(inactive, inactive)]
            K[:k, k:] = EI.T
            K[k:, :k] = EI
            rhs = np.concatenate([-(g[inactive] + self.G[inactive] @ yA), rhs_c])
            try:
                sol = np.linalg.solve(K, rhs)
            except np.linalg.LinAlgError:
                return None
            y = yA.copy()
            y[inactive] = sol[:k]
            nu = np.zeros(len(self.E_rows))
            nu[keep] = sol[k:]
            mu = self.G @ y + g + E.T @ nu
            mu[inactive] = 0.0
        else:
            return None
        tol = 1e-9
        if (y < lo - tol).any() or (y > hi + tol).any():
            return None
        scale = 1e-9 * max(1.0, float(np.abs(mu).max()))
        if (mu[act_lo & ~fixed] < -scale).any() or (mu[act_hi] > scale).any():
            return None
        return np.clip(y, lo, hi)

    def active_set(
        self, start: np.ndarray, lo: np.ndarray, hi: np.ndarray, g: np.ndarray, max_iter: int = 200
    ) -> tuple[np.ndarray, int]:
        """Primal active-set method from the projection of ``start``."""
        y = self.project(start, lo, hi)
        tol = 1e-10
        at_lo = (y <= lo + tol) | (lo == hi)
        at_hi = (y >= hi - tol) & ~at_lo
        y = np.where(at_lo, lo, np.where(at_hi, hi, y))
        fixed = lo == hi
        groups = np.flatnonzero(self.counted)
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            F = np.flatnonzero(~(at_lo | at_hi))
            grad = self.G @ y + g
            # equality-constrained step on the free variables: G_FF p + E_Fᵀ ν = -grad_F, E_F p = 0
            rows = [gi for gi in groups if np.any(self.group[F] == gi)]
            if len(F):
                E = (self.group[F][None, :] == np.array(rows)[:, None]).astype(np.float64)
                K = np.zeros((len(F) + len(rows), len(F) + len(rows)))
                K[: len(F), : len(F)] = self.G[np.ix_(F, F)]
                K[: len(F), len(F) :] = E.T
                K[len(F) :, : len(F)] = E
                rhs = np.concatenate([-grad[F], np.zeros(len(rows))])
                try:
                    sol = np.linalg.solve(K, rhs)
                except np.linalg.LinAlgError:
                    sol = np.linalg.lstsq(K, rhs, rcond=None)[0]
                p = sol[: len(F)]
                nu = np.zeros(self.num_groups)
                nu[rows] = sol[len(F) :]
            else:
                p = np.zeros(0)
                nu = np.zeros(self.num_groups)
            if len(F) and np.abs(p).max() > 1e-12:
                # ratio test
                step = 1.0
                block = -1
                yF = y[F]
                neg, pos = p < -1e-15, p > 1e-15
                with np.errstate(divide="ignore", invalid="ignore"):
                    r_lo = np.where(neg, (lo[F] - yF) / p, np.inf)
                    r_hi = np.where(pos, (hi[F] - yF) / p, np.inf)
                r = np.minimum(r_lo, r_hi)
                j = int(np.argmin(r))
                if r[j] < 1.0:
                    step, block = max(0.0, float(r[j])), j
                y[F] = yF + step * p
                if block >= 0:
                    i = F[block]
                    if r_lo[block] <= r_hi[block]:
                        y[i], at_lo[i] = lo[i], True
                    else:
                        y[i], at_hi[i] = hi[i], True
                    continue
                grad = self.G @ y + g
            # multipliers of the bound constraints: grad_i + ν_g(i); at lo needs >= 0, at hi <= 0
            missing = [gi for gi in groups if gi not in rows]
            if missing:  # a group with no free variable: the ν that best meets the sign conditions
                nu[missing] = self._best_nu(grad, at_lo, at_hi, fixed)[missing]
            nu_i = nu[self.group]
            mult = grad + nu_i
            scale = 1e-9 * max(1.0, float(np.abs(grad).max()))
            bad_lo = at_lo & ~fixed & (mult < -scale)
            bad_hi = at_hi & ~fixed & (mult > scale)
            viol = np.where(bad_lo, -mult, 0.0) + np.where(bad_hi, mult, 0.0)
            if not viol.any():
                break
            i = int(np.argmax(viol))
            at_lo[i] = at_hi[i] = False
        return y, it

    def _best_nu(
        self, grad: np.ndarray, at_lo: np.ndarray, at_hi: np.ndarray, fixed: np.ndarray
    ) -> np.ndarray:
        """Per-group multipliers that best meet the sign conditions of the variables at bounds."""
        nu = np.zeros(self.num_groups)
        for gi in np.flatnonzero(self.counted):
            m = (self.group == gi) & ~fixed
            lo_vals, hi_vals = -grad[m & at_lo], -grad[m & at_hi]
            a = lo_vals.max() if len(lo_vals) else -np.inf  # ν >= -grad_i for i at lo
            b = hi_vals.min() if len(hi_vals) else np.inf  # ν <= -grad_i for i at hi
            if np.isfinite(a) and np.isfinite(b):
                nu[gi] = (a + b) / 2
            elif np.isfinite(a) or np.isfinite(b):
                nu[gi] = a if np.isfinite(a) else b
        return nu


def project_capped_simplex(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: float) -> np.ndarray:
    """Projection of z onto ``{lo ≤ y ≤ hi, Σy = k}``: ``clip(z − τ, lo, hi)`` with the τ that
    meets the sum, found exactly among the breakpoints (vectorised, no iteration)."""
    if not len(z):
        return z.copy()
    taus = np.unique(np.concatenate([z - lo, z - hi]))
    sums = np.clip(z[None, :] - taus[:, None], lo, hi).sum(axis=1)  # non-increasing in τ
    # first breakpoint where the sum drops to k or below; interpolate on the segment before it
    i = int(np.searchsorted(-sums, -k, side="left"))
    if i == 0:
        return np.clip(z - taus[0], lo, hi)
    if i == len(taus):
        return np.clip(z - taus[-1], lo, hi)
    t0, t1, s0, s1 = taus[i - 1], taus[i], sums[i - 1], sums[i]
    tau = t0 if s0 == s1 else t0 + (s0 - k) * (t1 - t0) / (s0 - s1)
    return np.clip(z - tau, lo, hi)
