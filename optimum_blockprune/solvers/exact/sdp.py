"""Doubly non-negative (DNN) relaxation of ``min hᵀy + yᵀJy`` over binary y with count
constraints, by an ADMM in numpy; its dual gives a convex reformulation for branch and bound.

The lifted matrix is ``X = [[1, yᵀ], [y, Y]]`` with ``Y ≈ yyᵀ``, positive semi-definite and
entrywise non-negative. Equalities (each ``pᵀXq = b``): ``X₀₀ = 1``, ``Y_ii = y_i`` (binary),
``Σ_{j∈g} y_j = k_g`` and ``Σ_{j∈g} Y_ij = k_g y_i`` for every count group g. For ANY dual point
(λ, Z ≥ 0) with slack ``S = C − Σ λ_k A_k − Z``, every feasible binary y has

    f(y) = bᵀλ + [1; y]ᵀ S [1; y] + [1; y]ᵀ Z [1; y],

so ``q(y) = bᵀλ + [1; y]ᵀ S [1; y] + (the linear part of the Z term)`` is convex once S's y-block
is made positive semi-definite by a diagonal shift (``y_i² = y_i``), and the off-diagonal Z part
``yᵀZ_yy y ≥ 0`` can be bounded below at every branch-and-bound node by its value on the blocks
fixed to one. The bound therefore holds however far the ADMM got; convergence only tightens it.
(Quadratic convex reformulation in the style of Billionnet, Elloumi and Plateau; the ADMM is the
dual one of Wen, Goldfarb and Yin for SDPs with non-negative variables.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Reformulation:
    """``q(y) = const + lin·y + yᵀ quad y`` (quad positive semi-definite) and ``pair`` (≥ 0, zero
    diagonal) such that ``f(y) = q(y) + yᵀ pair y`` on every feasible binary y."""

    const: float
    lin: np.ndarray
    quad: np.ndarray
    pair: np.ndarray
    bound: float  # a valid lower bound of the energy over feasible binaries
    iterations: int
    seconds: float
    state: dict = field(default_factory=dict, repr=False)  # to warm-start another run

    def value(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        q = self.const + y @ self.lin + np.einsum("...i,ij,...j->...", y, self.quad, y)
        return q + np.einsum("...i,ij,...j->...", y, self.pair, y)


class Lifting:
    """The equality constraints ``𝒜(X) = b`` of the lifted problem, applied with their structure:
    ``X₀₀``; ``X_ii − X_0i`` for each i; per count group g, ``Σ_{j∈g} X_0j`` and
    ``Σ_{j∈g} X_ij − k_g X_i0`` for each i."""

    def __init__(self, n: int, groups: list[tuple[np.ndarray, int]]) -> None:
        self.n = n
        self.ind = np.zeros((n, len(groups)))
        for gi, (members, _) in enumerate(groups):
            self.ind[np.asarray(members, dtype=np.intp), gi] = 1.0
        self.k = np.array([float(k) for _, k in groups])
        G = len(groups)
        self.b = np.concatenate([[1.0], np.zeros(n), self.k, np.zeros(n * G)])
        # Gram matrix 𝒜𝒜* from the explicit matrices (small, once)
        eye = np.eye(n + 1)
        mats = [np.outer(eye[0], eye[0])]
        for i in range(n):
            mats.append(_sym(eye[i + 1], eye[i + 1] - eye[0]))
        for gi in range(G):
            v = np.concatenate([[0.0], self.ind[:, gi]])
            mats.append(_sym(eye[0], v))
        for gi in range(G):
            v = np.concatenate([[-self.k[gi]], self.ind[:, gi]])
            for i in range(n):
                mats.append(_sym(eye[i + 1], v))
        A = np.array([m.ravel() for m in mats])
        self.gram_inv = np.linalg.pinv(A @ A.T)

    def op(self, X: np.ndarray) -> np.ndarray:
        """𝒜(X)."""
        x0 = X[0, 1:]
        Y = X[1:, 1:]
        prods = Y @ self.ind - np.outer(X[1:, 0], self.k)  # (n, G)
        return np.concatenate([[X[0, 0]], np.diag(Y) - x0, x0 @ self.ind, prods.T.ravel()])

    def adj(self, lam: np.ndarray) -> np.ndarray:
        """𝒜*(λ) (symmetric)."""
        n, G = self.n, len(self.k)
        d = lam[1 : n + 1]
        sums = lam[n + 1 : n + 1 + G]
        prods = lam[n + 1 + G :].reshape(G, n).T  # (n, G)
        M = np.zeros((n + 1, n + 1))
        M[0, 0] = lam[0]
        L = prods @ self.ind.T  # Σ_g λ_{g,i} [j ∈ g]
        M[1:, 1:] = (L + L.T) / 2 + np.diag(d)
        row = -d / 2 + self.ind @ sums / 2 - prods @ self.k / 2
        M[0, 1:] = row
        M[1:, 0] = row
        return M


def _sym(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (np.outer(p, q) + np.outer(q, p)) / 2


def dnn(
    h: np.ndarray,
    J: np.ndarray,
    groups: list[tuple[np.ndarray, int]],
    *,
    max_iter: int = 3000,
    time_limit: float = 5.0,
    tol: float = 1e-5,
    stall: float = 1e-4,
    trace: float | None = None,
    warm: dict | None = None,
    target: float | None = None,
) -> Reformulation:
    """Solve the DNN relaxation approximately (groups: positions and counts) and return the
    reformulation of the best dual point seen. ``trace`` bounds ``1 + Σ y_i`` (default ``1 + n``).
    Stops at ``tol`` relative duality gap, after ``max_iter`` iterations or ``time_limit`` seconds,
    or when the bound has improved by less than ``stall`` (relative) over 200 iterations; with a
    ``target`` (the energy the bound should reach, e.g. the K-th best found), also when it reaches
    it or improved by less than 1% of the distance to it over 200 iterations."""
    started = time.perf_counter()
    n = len(h)
    d = n + 1
    C = np.zeros((d, d))
    C[0, 1:] = C[1:, 0] = h / 2
    C[1:, 1:] = (J + J.T) / 2
    scale = max(1e-300, float(np.abs(C).max()))
    Cs = C / scale
    lift = Lifting(n, groups)
    b = lift.b
    tr = float(trace if trace is not None else 1 + n)
    if warm:
        X, S, Z, mu = warm["X"], warm["S"], warm["Z"] / scale * warm.get("scale", scale), warm["mu"]
        S = S / scale * warm.get("scale", scale)
    else:
        X, S, Z, mu = np.eye(d) / d, np.zeros((d, d)), np.zeros((d, d)), 1.0
    lam = np.zeros(len(b))
    best = (-np.inf, lam, Z)
    history: list[float] = []
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        lam = lift.gram_inv @ (mu * (b - lift.op(X)) - lift.op(S + Z - Cs))
        adj = lift.adj(lam)
        Z = np.maximum(0.0, Cs - adj - S - mu * X)
        V = Cs - adj - Z
        W = V - mu * X
        w, U = np.linalg.eigh(W)
        S = (U * np.maximum(w, 0.0)) @ U.T
        X = (S - W) / mu  # = Π_PSD(-W)/μ, positive semi-definite
        if it % 10 == 0:
            primal = np.linalg.norm(lift.op(X) - b) / (1 + np.linalg.norm(b))
            dual = np.linalg.norm(S - V) / (1 + np.linalg.norm(Cs))
            low = float(np.linalg.eigvalsh(V)[0])  # V = C - 𝒜*λ - Z is the exact dual slack
            value = float(b @ lam) + tr * min(0.0, low)
            if value > best[0]:
                best = (value, lam.copy(), Z.copy())
            history.append(best[0])
            objective = float(np.sum(Cs * X))
            gap = abs(objective - value) / (1e-12 + abs(objective) + abs(value))
            step = history[-1] - history[-21] if len(history) > 20 else np.inf
            stalled = step <= stall * (1e-12 + abs(history[-1]))
            if target is not None:
                distance = target / scale - history[-1]
                stalled = stalled or distance <= 0 or step <= 0.01 * distance
            if (gap < tol and primal < tol) or stalled or time.perf_counter() - started > time_limit:
                break
            if it % 20 == 0:
                if primal > 5 * dual:
                    mu *= 1.4
                elif dual > 5 * primal:
                    mu *= 0.7
    state = {"X": X, "S": S, "Z": Z, "mu": mu, "scale": scale}
    _, lam, Z = best if np.isfinite(best[0]) else (None, lam, Z)
    ref = reformulation(Cs, lift, lam, Z, tr)
    ref.const, ref.lin, ref.quad, ref.pair = (
        ref.const * scale,
        ref.lin * scale,
        ref.quad * scale,
        ref.pair * scale,
    )
    ref.bound *= scale
    ref.iterations, ref.seconds, ref.state = it, time.perf_counter() - started, state
    return ref


def reformulation(
    C: np.ndarray, lift: Lifting, lam: np.ndarray, Z: np.ndarray, trace: float
) -> Reformulation:
    """The reformulation of a dual point (λ, Z ≥ 0): exact slack, y-block shifted to PSD."""
    Z = np.maximum(Z, 0.0)
    Z = (Z + Z.T) / 2
    S = C - lift.adj(lam) - Z
    low_s = float(np.linalg.eigvalsh(S)[0])
    bound = float(lift.b @ lam) + trace * min(0.0, low_s)
    n = len(S) - 1
    quad = S[1:, 1:].copy()
    # the Z terms that are linear on binaries: row 0 (x̂₀ = 1) and the diagonal (y_i² = y_i)
    lin = 2 * S[0, 1:] + 2 * Z[0, 1:] + np.diag(Z)[1:]
    const = float(lift.b @ lam + S[0, 0] + Z[0, 0])
    pair = Z[1:, 1:].copy()
    np.fill_diagonal(pair, 0.0)
    low = float(np.linalg.eigvalsh(quad)[0]) if n else 0.0
    shift = max(0.0, -low) * (1 + 1e-9) + 1e-12 * max(1.0, float(np.abs(quad).max(initial=0.0)))
    quad[np.diag_indices(n)] += shift
    lin -= shift
    return Reformulation(const, lin, quad, pair, bound, 0, 0.0)
