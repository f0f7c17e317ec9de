"""EvoPress (Sieberling et al., ICML 2025, "EvoPress: Towards Optimal Dynamic Model Compression via
Evolutionary Search"), its depth-pruning search as in its public ``evo_drop_search.py``.

A (1 + λ) evolutionary search over removal configurations of a fixed size. The first parent is the
fittest of ``INITIAL`` random valid configurations; each generation makes λ = ``OFFSPRING``
distinct offspring of the parent, each by ``min(U{1..3}, U{1..3})`` swaps of a removed and a kept
block (the removal count and every per-kind count stay: a fixed-magnetisation move), and selects in
``STAGES``: all offspring on a random few calibration samples, the best few again on more, the
parent joining the last stage, where it is replaced only by an offspring at least as good on the
same samples. Fitness is the scorer's objective (KL to the dense model in the paper: ``--objective
kl``). Every configuration it visits honours the request's quota (protect, force, counts per kind)
and rules.

Scaled from the paper to this project's calibration sets: the paper draws 2,048 and 32,768 of its
131,072 calibration tokens (1/64 and 1/4) per stage, and the first parent from 64 candidates on
2,048 tokens; here each stage draws a share of the calibration samples, 1/16 and 1/4 (at the
default 32 samples x 128 tokens: 2 and 8 samples, 256 and 1,024 tokens; at least one sample),
since 1/64 of a few thousand tokens is less than one sample. λ = 32, survivors 2 then 1, at most
3 swaps and 64 initial candidates are the paper's; the default generations its script's
``k (n - k) / 1.5`` for k removed of n blocks. The paper's sublayer search removes as many
attention as MLP branches and swaps within a kind: here that is a request with counts per kind
(``attn=k,mlp=k``); a plain count lets a swap trade one kind for another.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from optimum_blockprune.blocks import Block
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.selection.rules import Rules

#: Offspring per generation (λ), initial random candidates, the most swaps in one mutation.
OFFSPRING = 32
INITIAL = 64
MAX_MUTATIONS = 3
#: Selection stages: (survivors, share of the calibration samples drawn for the stage).
STAGES: tuple[tuple[int, float], ...] = ((2, 1 / 16), (1, 1 / 4))
#: Share of the samples on which the initial candidates are compared (the first stage's).
INITIAL_SHARE = STAGES[0][1]
#: Mutation attempts per wanted offspring before a generation makes do with fewer (tiny spaces).
ATTEMPTS = 50


class QuotaLike(Protocol):
    """What the search needs of a request's quota (see ``baselines.Quota``)."""

    blocks: Sequence[Block]
    total: int
    counts: dict[str, int] | None
    protect: set[int]
    force: list[int]
    rules: Rules

    def lowest(self, scores: Sequence[float], chosen: Sequence[int] | None = None) -> list[int]: ...


def valid(quota: QuotaLike, chosen: Sequence[int]) -> bool:
    """Does ``chosen`` (block positions) fill ``quota`` exactly: its size and counts per kind,
    every forced block, no protected one, nothing the rules refuse?"""
    kinds = [quota.blocks[k].kind for k in chosen]
    if len(set(chosen)) != len(chosen) or len(chosen) != quota.total:
        return False
    if quota.counts is not None and any(kinds.count(kind) != quota.counts.get(kind, 0) for kind in kinds):
        return False
    if set(chosen) & quota.protect or not set(quota.force) <= set(chosen):
        return False
    return quota.rules.refusal([quota.blocks[k].name for k in chosen]) is None


def default_generations(n_blocks: int, removed: int) -> int:
    """The paper script's generation budget, ``int(k (n - k) / 1.5)``, at least 1."""
    return max(1, int(removed * (n_blocks - removed) / 1.5))


@dataclass
class Trajectory:
    """The search's course: after the initial selection and each generation, the parent's fitness
    on the last stage's samples and the work done so far (dense forward-pass equivalents)."""

    points: list[dict[str, Any]] = field(default_factory=list)

    def add(self, generation: int, fitness: float, forward_passes: float, parent: Sequence[str]) -> None:
        self.points.append(
            {
                "generation": generation,
                "fitness": float(fitness),
                "forward_passes": round(float(forward_passes), 3),
                "removed": list(parent),
            }
        )


Config = tuple[int, ...]
#: Fitness of a configuration (block positions) on the given sample indices; lower is better.
Fitness = Callable[[Config, np.ndarray], float]


class EvoPress:
    """The search over ``quota``'s configurations with ``fitness`` on ``n_samples`` samples;
    ``work()`` reports the forward passes spent so far (for the trajectory); ``rebase(parent)`` is
    called whenever the parent changes (a scorer then caches the parent's layer inputs, so an
    offspring is computed from its first difference with the parent). ``stages`` and
    ``initial_share`` default to the scaled paper schedule above."""

    def __init__(
        self,
        quota: QuotaLike,
        fitness: Fitness,
        n_samples: int,
        seed: int = 0,
        work: Callable[[], float] = lambda: 0.0,
        rebase: Callable[[Config], None] = lambda parent: None,
        stages: Sequence[tuple[int, float]] = STAGES,
        initial_share: float = INITIAL_SHARE,
    ) -> None:
        self.quota, self.fitness, self.n_samples, self.work = quota, fitness, n_samples, work
        self.rebase, self.stages, self.initial_share = rebase, tuple(stages), initial_share
        self.rng = np.random.default_rng(seed)
        self.trajectory = Trajectory()

    # --------------------------------------------------------------------- configurations
    def _sample_rows(self, share: float) -> np.ndarray:
        size = min(self.n_samples, max(1, math.ceil(share * self.n_samples)))
        return np.sort(self.rng.choice(self.n_samples, size=size, replace=False))

    def random_configuration(self) -> Config:
        """A random valid configuration: the forced blocks, then allowed blocks in random order."""
        return tuple(sorted(self.quota.lowest(self.rng.random(len(self.quota.blocks)).tolist())))

    def mutate(self, parent: Config) -> Config | None:
        """``min(U{1..3}, U{1..3})`` swaps of a removed (not forced) and a kept (not protected)
        block of the same kind when counts are per kind; None when the result breaks a rule."""
        quota, chosen = self.quota, set(parent)
        flips = min(self.rng.integers(1, MAX_MUTATIONS + 1), self.rng.integers(1, MAX_MUTATIONS + 1))
        for _ in range(int(flips)):
            out = sorted(k for k in chosen if k not in quota.force)
            if not out:
                return None
            a = int(out[self.rng.integers(len(out))])
            kind = quota.blocks[a].kind
            inn = [
                k
                for k in range(len(quota.blocks))
                if k not in chosen
                and k not in quota.protect
                and (quota.counts is None or quota.blocks[k].kind == kind)
            ]
            if not inn:
                return None
            chosen.remove(a)
            chosen.add(int(inn[self.rng.integers(len(inn))]))
        config = tuple(sorted(chosen))
        return config if valid(quota, config) else None

    def offspring(self, parent: Config, count: int) -> list[Config]:
        """Up to ``count`` distinct valid offspring, none equal to the parent."""
        out: list[Config] = []
        for _ in range(ATTEMPTS * count):
            if len(out) == count:
                break
            child = self.mutate(parent)
            if child is not None and child != parent and child not in out:
                out.append(child)
        return out

    # --------------------------------------------------------------------- selection
    def select(
        self, candidates: list[Config], survivors: int, share: float
    ) -> tuple[list[Config], list[float]]:
        """The ``survivors`` fittest on a fresh random ``share`` of the samples (ties: the earlier)."""
        rows = self._sample_rows(share)
        scores = [self.fitness(c, rows) for c in candidates]
        order = np.argsort(scores, kind="stable")[:survivors]
        return [candidates[i] for i in order], [scores[i] for i in order]

    def initial(self) -> tuple[Config, float]:
        """The fittest of up to ``INITIAL`` distinct random configurations."""
        seen: list[Config] = []
        error: BlockPruneError | None = None
        for _ in range(ATTEMPTS * INITIAL):
            if len(seen) == INITIAL:
                break
            try:  # a random order can reach a dead end (the rules refuse every next block)
                config = self.random_configuration()
            except BlockPruneError as exc:
                error = exc
                continue
            if config not in seen:
                seen.append(config)
        if not seen:
            raise error or BlockPruneError("no valid configuration to start from; ask for fewer blocks")
        best, scores = self.select(seen, 1, self.initial_share)
        return best[0], scores[0]

    def run(
        self,
        generations: int,
        names: Callable[[Config], list[str]] = lambda c: list(map(str, c)),
        step: Callable[[], Any] = lambda: None,
    ) -> Config:
        """The parent after ``generations`` generations (fewer when no offspring can be made);
        ``names`` labels configurations in the trajectory, ``step()`` follows each generation."""
        parent, fitness = self.initial()
        self.rebase(parent)
        self.trajectory.add(0, fitness, self.work(), names(parent))
        for generation in range(1, generations + 1):
            pool = self.offspring(parent, OFFSPRING)
            if not pool:
                break
            for s, (survivors, share) in enumerate(self.stages):
                if s == len(self.stages) - 1:
                    pool = [*pool, parent]  # elitist: the parent competes on the same samples, last
                pool, scores = self.select(pool, survivors, share)
            if pool[0] != parent:
                self.rebase(pool[0])
            parent, fitness = pool[0], scores[0]
            self.trajectory.add(generation, fitness, self.work(), names(parent))
            step()
        return parent
