"""Lower bounds on the energy over a branch-and-bound node, from a convex reformulation.

A :class:`Bounder` is built at one node: the DNN relaxation of the node's subproblem (its fixed
blocks substituted) gives ``f = q + yᵀ pair y`` on every feasible configuration, q convex and
pair ≥ 0 (:mod:`.sdp`). It then bounds that node and every descendant: the convex QP of q plus a
linear under-estimate of the pair term (exact on the blocks fixed to one, and the r - 1 cheapest
pairs of each block among the free ones), with the parameter budget taken in by a Lagrange
multiplier, over the node's box and counts (:mod:`.qp`). Every bound holds however early the
relaxation or the QP stopped.
"""

from __future__ import annotations

import numpy as np

from optimum_blockprune.solvers.exact.nodes import NodeSpace
from optimum_blockprune.solvers.exact.qp import FALLBACK_ITERATIONS, NodeQP
from optimum_blockprune.solvers.exact.sdp import dnn


class Bounder:
    """The reformulation of one node, used for it and its descendants."""

    def __init__(
        self,
        space: NodeSpace,
        lo: np.ndarray,
        hi: np.ndarray,
        *,
        threshold: float = np.inf,
        warm: Bounder | None = None,
        time_limit: float = 5.0,
        max_iter: int = 3000,
    ) -> None:
        """``space``: what the node lives in (its energies, groups, budget); ``threshold``: the
        search's current K-th best energy (the relaxation stops early once its bound is close
        enough to it to matter little)."""
        self.space = s = space
        n = s.n
        self.open = open_ = np.flatnonzero(lo < hi)
        ones = np.flatnonzero(lo == 1)
        h_o = s.h[open_] + 2 * s.J[np.ix_(open_, ones)].sum(axis=1)
        J_o = s.J[np.ix_(open_, open_)]
        groups, trace = [], 1
        for gi, count in enumerate(s.counts):
            members = np.flatnonzero(s.group[open_] == gi)
            if count is None:
                trace += len(members)
            elif len(members):
                need = count - int(lo[s.group == gi].sum())
                groups.append((members, need))
                trace += need
        state = None
        if warm is not None and warm.state is not None:
            pos = np.searchsorted(warm.open, open_)
            sel = np.concatenate([[0], pos + 1])
            state = {
                k: (v[np.ix_(sel, sel)] if isinstance(v, np.ndarray) else v) for k, v in warm.state.items()
            }
        fixed_energy = float(s.h[ones].sum() + s.J[np.ix_(ones, ones)].sum())
        target = threshold - fixed_energy - s.offset
        ref = dnn(
            h_o,
            J_o,
            groups,
            trace=trace,
            time_limit=time_limit,
            max_iter=max_iter,
            warm=state,
            target=target if np.isfinite(target) else None,
        )
        self.state = ref.state
        self.iterations, self.seconds = ref.iterations, ref.seconds
        self.G = np.zeros((n, n))
        self.G[np.ix_(open_, open_)] = 2 * ref.quad
        g = np.zeros(n)
        g[open_] = ref.lin
        self.pair = np.zeros((n, n))
        self.pair[np.ix_(open_, open_)] = ref.pair
        self.has_pairs = bool(ref.pair.max(initial=0.0) > 0)
        self.const = ref.const + fixed_energy + s.offset
        self.sdp_bound = ref.bound + fixed_energy + s.offset
        self.qp = NodeQP(self.G, g, s.group, s.counts)
        self.lam = 0.0
        self.g0 = g

    # ------------------------------------------------------------------ node bound
    def node_linear(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
        """Linear term and constant of the node function ``q + (under-estimate of yᵀ pair y)``."""
        zlo = self.pair @ lo
        g = self.qp.g + 2 * zlo
        const = self.const - float(lo @ zlo)
        if self.has_pairs:
            free = np.flatnonzero(lo < hi)
            r = self.space.remaining(lo, len(free))
            if r >= 2:
                rows = self.pair[np.ix_(free, free)]
                np.fill_diagonal(rows, np.inf)
                g = g.copy()
                g[free] += np.partition(rows, r - 2, axis=1)[:, : r - 1].sum(axis=1)
        if self.space.w is not None:
            const += self.lam * self.space.b
        return g, const

    def evaluate(
        self, start: np.ndarray, lo: np.ndarray, hi: np.ndarray, thorough: bool = False
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """(valid lower bound on the energy over the node, QP point, binary vertex of the bound);
        ``thorough`` lets the QP take as many steps as it needs (for nodes with a new relaxation)."""
        g, const = self.node_linear(lo, hi)
        y, _ = self.qp.solve(start, lo, hi, g, max_iter=500 if thorough else FALLBACK_ITERATIONS)
        value, s = self.qp.bound(y, lo, hi, g)
        return value + const, y, s

    def fit_multiplier(self, start: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Budget multiplier λ ≥ 0 maximising this node's bound (bisection on the budget's slack)."""
        s = self.space
        if s.w is None:
            return
        w, b = s.w, s.b

        def used(lam: float) -> float:
            self.qp.g = self.g0 - lam * w
            g, _ = self.node_linear(lo, hi)
            y, _ = self.qp.solve(start, lo, hi, g, max_iter=500)
            return float(w @ y)

        self.lam = 0.0
        if used(0.0) >= b:
            self.qp.g = self.g0
            return
        top = max(1.0, float(np.abs(self.g0).max())) / max(float(w.max()), 1.0)
        for _ in range(60):
            if used(top) >= b:
                break
            top *= 4
        low = 0.0
        for _ in range(40):
            mid = (low + top) / 2
            low, top = (mid, top) if used(mid) < b else (low, mid)
        self.lam = low
        self.qp.g = self.g0 - low * w
