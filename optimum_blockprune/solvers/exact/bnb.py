"""Exact branch and bound with a certificate: the K lowest-energy configurations, proven.

``min c + hᵀy + yᵀJy`` over the free blocks y ∈ {0,1}ⁿ under the problem's constraints (counts
per group, a parameter budget), whether or not J is positive semi-definite.

* **Bounds** (:mod:`.bounds`): a doubly non-negative semidefinite relaxation at the root gives a
  convex reformulation of the energy, exact on feasible configurations up to a non-negative pair
  term; every node is bounded by a convex QP of it (:mod:`.qp`). Nodes with many completions
  left get their own relaxation, warm-started from their ancestor's (bound tightening), which
  their descendants inherit. All bounds are valid however early an inner solver stops.
* **Search**: best first; branch on the free block the relaxation most wants removed (the "1"
  child shrinks the count left, the "0" child raises the bound). A node is pruned only when its
  bound reaches the K-th best energy found, so the top-K list is exact when the search ends
  (``info["optimal"]``). Nodes with few completions are enumerated outright.
* **Incumbents**: a swap/add/drop local search (:mod:`.moves`) at the start and on the best
  configurations now and then, the binary vertices of the node bounds, and ``incumbents=``
  (e.g. tabu's).

Stops at ``time_limit`` seconds or ``node_limit`` nodes with what it proved: ``lower_bound`` (on
the ground-state energy), ``gap``, and ``proven`` (how many of the returned configurations are
certified to be the lowest).
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any

import dimod
import numpy as np

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers.base import Solver, make_sampleset
from optimum_blockprune.solvers.exact.bounds import Bounder
from optimum_blockprune.solvers.exact.nodes import NodeSpace
from optimum_blockprune.solvers.exact.topk import TopK
from optimum_blockprune.solvers.heuristic.moves import Moves
from optimum_blockprune.solvers.problem import Problem, random_starts

DEFAULT_TIME_LIMIT = 60.0
DEFAULT_NODE_LIMIT = 1_000_000
LEAF_SIZE = 4096  # nodes with at most this many completions are enumerated
TIGHTEN_SIZE = 1_000_000  # at first, nodes with more completions than this get their own relaxation
ROOT_SDP_SECONDS = 0.1  # fraction of the time limit for the root relaxation (at most 10 s)
NODE_SDP_ITERATIONS = 30  # warm-started ADMM steps per tightened node
TIGHTEN_SHARE = 0.5  # at most this fraction of the search time goes to tightening
LOCAL_STARTS = 64
POLISH_EVERY = 200  # nodes between local searches around the best configurations


class BranchAndBound(NodeSpace):
    """One run of the search on a problem (see the module docstring)."""

    def __init__(
        self,
        problem: Problem,
        top_k: int,
        incumbents: np.ndarray | None = None,
        seed: int = 0,
        tighten_size: int = TIGHTEN_SIZE,
        leaf_size: int = LEAF_SIZE,
        local_starts: int = LOCAL_STARTS,
    ):
        super().__init__(problem)
        n = self.n
        self.leaf_size = leaf_size
        self.local_starts = local_starts
        self.top_k = top_k
        self.seed = seed
        self.tighten_size = tighten_size
        self.moves = Moves(problem, self.h, self.J)
        self.pool = TopK(top_k, self.n, distinct=True)
        scale = max(1.0, float(np.abs(self.J).sum()), float(np.abs(self.h).sum()))
        self.tol = 1e-9 * scale
        self.lo, self.hi = np.zeros(n), np.ones(n)
        for gi, count in enumerate(self.counts):  # groups whose count leaves no choice
            members = self.group == gi
            if count == 0:
                self.hi[members] = 0.0
            elif count is not None and count == members.sum():
                self.lo[members] = 1.0
        if incumbents is not None and len(incumbents):
            self.offer(np.asarray(incumbents)[:, problem.free])
        self.stats = {"nodes": 0, "tightened": 0, "enumerated": 0, "sdp_seconds": 0.0}

    # ------------------------------------------------------------------ incumbents
    def offer(self, Y: np.ndarray) -> None:
        Y = np.asarray(Y, dtype=np.int8).reshape(-1, self.n)
        if len(Y):
            Y = Y[self.problem.holds(Y)]
            self.pool.add(Y, self.energies(Y))

    def polish(self, starts: np.ndarray | None = None) -> None:
        """Local search from ``starts`` and around the best configurations found so far."""
        best = self.pool.sorted()[0]
        Y = best if starts is None else np.concatenate([self.moves.descend(self.moves.repair(starts)), best])
        if len(Y):
            self.offer(self.moves.low_states(Y, self.top_k))

    def branch_variable(self, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
        """The free block the relaxation most wants removed."""
        free = np.flatnonzero(lo < hi)
        return int(free[np.argmax(y[free])])

    # ------------------------------------------------------------------ search
    def bounder(
        self, lo: np.ndarray, hi: np.ndarray, warm: Bounder | None, seconds: float, iters: int
    ) -> Bounder:
        bounder = Bounder(
            self, lo, hi, threshold=self.pool.threshold, warm=warm, time_limit=seconds, max_iter=iters
        )
        bounder.fit_multiplier(self.qp_start(bounder, lo, hi), lo, hi)
        self.stats["sdp_seconds"] += bounder.seconds
        return bounder

    @staticmethod
    def qp_start(bounder: Bounder, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return bounder.qp.project((lo + hi) / 2, lo, hi)

    def run(self, time_limit: float, node_limit: int) -> dict[str, Any]:
        """Search best first until the top-K is proven, or ``time_limit`` / ``node_limit``; the
        configurations found are left in ``self.rows``, what was proven is returned."""
        started = time.perf_counter()
        deadline = started + time_limit
        if self.n and self.local_starts:
            self.polish(random_starts(self.problem, self.local_starts, self.seed).astype(np.float64))
        lo, hi = self.lo.copy(), self.hi.copy()
        self.rows = np.zeros((0, self.n), dtype=np.int8)
        if self.completions(lo, hi) <= self.leaf_size:  # small enough to enumerate: no search needed
            return self._enumerate_all(lo, hi)
        root = self.bounder(lo, hi, None, min(10.0, max(0.05, ROOT_SDP_SECONDS * time_limit)), 3000)
        bound, y, s = root.evaluate(self.qp_start(root, lo, hi), lo, hi, thorough=True)
        self.offer(s)
        self.root_bound, self.root_sdp_bound = bound, root.sdp_bound
        self.counter = itertools.count()
        heap: list[tuple[float, int, np.ndarray, np.ndarray, Bounder]] = []
        fix = np.where(lo == hi, lo, -1).astype(np.int8)
        heapq.heappush(heap, (bound, next(self.counter), fix, y, root))
        nodes, stopped = 1, None
        while heap:
            bound, _, fix, y, bounder = heap[0]
            if bound - self.tol >= self.pool.threshold:
                heap.clear()
                break
            if nodes >= node_limit or time.perf_counter() > deadline:
                stopped = "node_limit" if nodes >= node_limit else "time_limit"
                break
            heapq.heappop(heap)
            children = self._expand(heap, bound, fix, y, bounder, root, started, deadline)
            if children is None:  # enumerated, or pruned by its own relaxation
                continue
            nodes += children
            if self.local_starts and nodes % POLISH_EVERY < 2:
                self.polish()
        return self._result(heap, nodes, stopped)

    def _expand(
        self,
        heap: list,
        bound: float,
        fix: np.ndarray,
        y: np.ndarray,
        bounder: Bounder,
        root: Bounder,
        started: float,
        deadline: float,
    ) -> int | None:
        """Process one node: enumerate it when small, tighten its relaxation when large (and the
        tightening budget allows), else branch. The number of children pushed, None when the
        node was closed without branching."""
        lo, hi = np.where(fix == 1, 1.0, 0.0), np.where(fix == 0, 0.0, 1.0)
        size = self.completions(lo, hi)
        if size <= self.leaf_size:
            self.offer(self.enumerate(lo, hi))
            self.stats["enumerated"] += size
            return None
        spent = time.perf_counter() - started
        if (
            size > self.tighten_size
            and bounder.open.size > (hi > lo).sum()
            and self.stats["sdp_seconds"] - root.seconds <= TIGHTEN_SHARE * spent
        ):
            seconds = max(0.0, min(1.0, deadline - time.perf_counter()))
            bounder = self.bounder(lo, hi, bounder, seconds, NODE_SDP_ITERATIONS)
            self.stats["tightened"] += 1
            tight, y, s = bounder.evaluate(y, lo, hi, thorough=True)
            self.offer(s)
            if tight - self.tol >= self.pool.threshold:
                return None
            bound = max(bound, tight)
        return self._branch(heap, bound, y, lo, hi, bounder)

    def _branch(
        self, heap: list, bound: float, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, bounder: Bounder
    ) -> int:
        """Push the node's feasible children whose bound can still beat the K-th best; how many
        children were bounded."""
        j = self.branch_variable(y, lo, hi)
        children = 0
        for value in (1.0, 0.0):
            clo, chi = lo.copy(), hi.copy()
            clo[j] = chi[j] = value
            if not self.feasible(clo, chi):
                continue
            children += 1
            cbound, cy, cs = bounder.evaluate(y, clo, chi)
            self.offer(cs)
            cbound = max(cbound, bound)
            if cbound - self.tol < self.pool.threshold:
                cfix = np.where(clo == chi, clo, -1).astype(np.int8)
                heapq.heappush(heap, (cbound, next(self.counter), cfix, cy, bounder))
        return children

    def _enumerate_all(self, lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
        """The whole problem enumerated (no search): every configuration proven."""
        self.offer(self.enumerate(lo, hi))
        self.rows, energies = self.pool.sorted()
        best = float(energies[0]) if len(energies) else np.inf
        self.stats["nodes"] = 1
        return {
            "optimal": True,
            "lower_bound": best,
            "gap": 0.0,
            "relative_gap": 0.0,
            "proven": len(energies),
            "nodes": 1,
            "open_nodes": 0,
            "stopped": None,
            "root_bound": best,
            "root_sdp_bound": None,
            "tightened": 0,
            "enumerated": self.completions(lo, hi),
            "sdp_seconds": 0.0,
        }

    def _result(self, heap: list, nodes: int, stopped: str | None) -> dict[str, Any]:
        """What the search proved: the best configurations, and the bound on the open nodes."""
        rows, energies = self.pool.sorted()
        open_bound = heap[0][0] if heap else np.inf
        optimal = not heap
        best = float(energies[0]) if len(energies) else np.inf
        lower = best if optimal else min(best, float(open_bound))
        self.rows = rows
        self.stats["nodes"] = nodes
        return {
            "optimal": optimal,
            "lower_bound": lower,
            "gap": best - lower,
            "relative_gap": (best - lower) / max(abs(best), 1e-300) if np.isfinite(best) else None,
            "proven": len(energies) if optimal else int(np.sum(energies <= open_bound + self.tol)),
            "nodes": nodes,
            "open_nodes": len(heap),
            "stopped": stopped,
            "root_bound": float(self.root_bound),
            "root_sdp_bound": float(self.root_sdp_bound),
            "tightened": self.stats["tightened"],
            "enumerated": self.stats["enumerated"],
            "sdp_seconds": self.stats["sdp_seconds"],
        }


class BranchAndBoundSolver(Solver):
    """Exact top-K by branch and bound on a semidefinite reformulation (see the module docs).

    Options: ``time_limit`` (seconds, default 60), ``node_limit``, ``seed``, ``incumbents`` (a
    (k, N) 0/1 array or a SampleSet of configurations to start from; by default tabu's top-K),
    ``tighten_size`` (nodes with more completions get their own relaxation), ``leaf_size`` (nodes
    with at most this many completions are enumerated), ``local_starts`` (local searches at the
    start; 0 turns the local search off, so that only the tree finds configurations).
    """

    name = "bnb"
    options = ("time_limit", "node_limit", "seed", "incumbents", "tighten_size", "leaf_size", "local_starts")

    def sample(self, problem: Problem, *, top_k: int = 10, **options: Any) -> dimod.SampleSet:
        top_k, started = self.begin(top_k, options)
        time_limit = float(options.get("time_limit", DEFAULT_TIME_LIMIT))
        node_limit = int(options.get("node_limit", DEFAULT_NODE_LIMIT))
        if not time_limit > 0 or node_limit < 1:
            raise BlockPruneError(
                f"time_limit must be positive and node_limit at least 1; got {time_limit} and {node_limit}"
            )
        seed = int(options.get("seed", 0))
        incumbents = options.get("incumbents")
        if incumbents is None:
            from optimum_blockprune.solvers.heuristic.dwave import TabuSolver

            incumbents = TabuSolver().sample(problem, top_k=top_k, seed=seed)
        if isinstance(incumbents, dimod.SampleSet):
            incumbents = _rows(incumbents, problem.names)
        search = BranchAndBound(
            problem,
            top_k,
            incumbents,
            seed,
            int(options.get("tighten_size", TIGHTEN_SIZE)),
            int(options.get("leaf_size", LEAF_SIZE)),
            int(options.get("local_starts", LOCAL_STARTS)),
        )
        info = search.run(max(0.0, time_limit - (time.perf_counter() - started)), node_limit)
        J = problem.energy.couplings
        low = float(np.linalg.eigvalsh(J)[0]) if len(J) else 0.0
        info["psd"] = bool(low >= -1e-10 * max(1.0, float(np.abs(J).max())))
        info["reformulation"] = "dnn-sdp"
        return make_sampleset(problem, problem.expand(search.rows), top_k, started, solver=self.name, **info)


def _rows(sampleset: dimod.SampleSet, names: list[str]) -> np.ndarray:
    """0/1 rows of a SampleSet in the order of ``names``."""
    labels = list(sampleset.variables)
    if sorted(labels) != sorted(names):
        raise BlockPruneError("incumbents must be a SampleSet over the problem's block names")
    order = [labels.index(name) for name in names]
    return np.asarray(sampleset.record.sample)[:, order]
