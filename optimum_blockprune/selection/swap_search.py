"""Energy-guided swap search: the last step of the energy method, a local search on real loss.

From a start configuration (the best of the solver's reranked top-K), the search tries single
swaps, one removed block restored and one kept block removed (the removal count, the counts per
kind and every other constraint stay), and moves to the first swap that lowers the mean
calibration loss. It stops at a configuration that no single swap improves on the calibration set
(a certificate of local optimality) or when its budget of forward passes is spent.

* **Energy-guided**: swaps are tried in the order of their energy change under a prior energy
  (the fields and couplings measured while choosing), so the likely improvements come first.
* **Multi-fidelity**: each swap is scored on the samples in chunks, the current configuration's
  highest-loss samples first. While climbing, a swap worse than the current configuration on its
  first chunk (the same samples, paired) waits; only a swap better there is scored in full. The
  waiting swaps are settled when certifying.
* **A rigorous bound**: losses are never negative (cross-entropy and KL are not), so a swap whose
  losses on the samples scored so far already sum to at least the current configuration's total
  cannot improve it: it is settled without its other samples. Swaps that remove an important
  block are usually settled after one chunk.

The search is independent of the model: it gets ``losses(config, rows)`` (per-sample losses of a
configuration, block positions, on sample indices), ``rebase(config)`` (a scorer then caches the
configuration's layer inputs, so a swap is computed from its first difference) and ``work()``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimum_blockprune.blocks import Block

#: Sample chunks a swap is scored in (the first one screens it while climbing).
CHUNKS = 4

Config = tuple[int, ...]
Swap = tuple[int, int]  # (removed block restored, kept block removed), block positions
#: Per-sample losses of a configuration on the given sample indices (in that order).
Losses = Callable[[Config, np.ndarray], np.ndarray]


@dataclass
class SwapSpace:
    """Which swaps keep a request's constraints: ``fixed`` blocks are never restored (forced),
    ``protect`` blocks never removed, ``same_kind`` swaps only blocks of one kind (counts per
    kind), and ``valid(config)`` checks the rest (rules, parameter or latency budget)."""

    blocks: Sequence[Block]
    valid: Callable[[Config], bool] = lambda config: True
    fixed: frozenset[int] = frozenset()
    protect: frozenset[int] = frozenset()
    same_kind: bool = False

    def swaps(self, config: Config) -> list[Swap]:
        """Every single swap of ``config`` whose result keeps the constraints."""
        chosen = set(config)
        out = []
        for a in config:
            if a in self.fixed:
                continue
            for b in range(len(self.blocks)):
                if b in chosen or b in self.protect:
                    continue
                if self.same_kind and self.blocks[a].kind != self.blocks[b].kind:
                    continue
                if self.valid(apply(config, (a, b))):
                    out.append((a, b))
        return out


def apply(config: Config, swap: Swap) -> Config:
    """``config`` with ``swap`` made."""
    a, b = swap
    return tuple(sorted({*config} - {a} | {b}))


@dataclass
class Certificate:
    """Whether the result is a local optimum of the calibration loss under single swaps."""

    local_optimum: bool
    swaps: int  # single swaps of the result that keep the constraints
    settled: int  # of them, shown not to improve it
    by_bound: int  # of those, settled by the bound before all samples were scored
    loss: float  # the result's mean calibration loss
    best_swap_loss: float | None  # the lowest mean loss of a swap scored on every sample
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchResult:
    removed: Config
    loss: float
    certificate: Certificate
    #: After the start and each accepted swap: ``{"step", "loss", "forward_passes", "removed"}``.
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)


class _Scores:
    """Per-sample losses known so far of every configuration the search met (each sample once)."""

    def __init__(self, losses: Losses, n_samples: int) -> None:
        self.losses, self.n = losses, n_samples
        self.values: dict[Config, np.ndarray] = {}
        self.negative = False  # a negative loss was seen: the bound no longer holds

    def get(self, config: Config, rows: np.ndarray) -> np.ndarray:
        values = self.values.setdefault(config, np.full(self.n, np.nan))
        todo = rows[np.isnan(values[rows])]
        if todo.size:
            values[todo] = self.losses(config, todo)
            self.negative |= bool((values[todo] < 0).any())
        return values[rows]


class SwapSearch:
    """The search over ``space`` with ``losses`` on ``n_samples`` samples; ``prior(config, swaps)``
    gives each swap's energy change (lower: tried first); ``budget``: forward passes the search
    may spend (``work()`` measures them; None: until certified)."""

    def __init__(
        self,
        space: SwapSpace,
        losses: Losses,
        n_samples: int,
        prior: Callable[[Config, list[Swap]], np.ndarray] | None = None,
        *,
        budget: float | None = None,
        work: Callable[[], float] = lambda: 0.0,
        rebase: Callable[[Config], None] = lambda config: None,
        chunks: int = CHUNKS,
        names: Callable[[Config], list[str]] = lambda config: list(map(str, config)),
        step: Callable[[float], Any] = lambda loss: None,
    ) -> None:
        self.space, self.n = space, n_samples
        self.scores = _Scores(losses, n_samples)
        self.prior, self.budget, self.work, self.rebase = prior, budget, work, rebase
        self.chunks, self.names, self.step = max(1, min(chunks, n_samples)), names, step
        self.spent_at_start = 0.0

    # ------------------------------------------------------------------ helpers
    def _spent(self) -> float:
        return self.work() - self.spent_at_start

    def _over_budget(self) -> bool:
        return self.budget is not None and self._spent() >= self.budget

    def _order(self, config: Config, swaps: list[Swap]) -> list[Swap]:
        """``swaps`` by their prior energy change, then gathered by :meth:`_base` (a group goes
        where its most promising swap went), so the scorer's base moves once per group."""
        if self.prior is not None and swaps:
            delta = np.asarray(self.prior(config, swaps), dtype=float)
            swaps = [swaps[i] for i in np.argsort(delta, kind="stable")]
        groups: dict[Config, list[Swap]] = {}
        for swap in swaps:
            groups.setdefault(self._base(config, swap), []).append(swap)
        return [swap for group in groups.values() for swap in group]

    def _base(self, config: Config, swap: Swap) -> Config:
        """The configuration a swap is best scored from: the one it shares the most layers with
        at the start. A swap differs from ``config`` first at its earlier block; from ``config``
        without the restored block (when that one comes first) or with the removed one (when it
        does), it differs only at its later block."""
        a, b = swap
        blocks = self.space.blocks
        if blocks[a].layer <= blocks[b].layer:
            return tuple(k for k in config if k != a)
        return tuple(sorted({*config, b}))

    def _bases(self, config: Config, swaps: list[Swap]) -> dict[Swap, Config]:
        """Where each swap is scored from: its :meth:`_base` when another swap shares it (the move
        pays for itself), else ``config``."""
        bases = {swap: self._base(config, swap) for swap in swaps}
        sizes = Counter(bases.values())
        return {swap: base if sizes[base] > 1 else config for swap, base in bases.items()}

    def _chunks(self, current: np.ndarray) -> list[np.ndarray]:
        """Sample indices in chunks, the current configuration's highest losses first (each chunk
        in increasing order)."""
        order = np.argsort(-current, kind="stable")
        return [np.sort(c) for c in np.array_split(order, self.chunks) if c.size]

    # ------------------------------------------------------------------ search
    def run(self, start: Config) -> SearchResult:
        """Climb from ``start`` (block positions) until certified or over budget."""
        self.spent_at_start = self.work()
        every = np.arange(self.n)
        config = tuple(sorted(start))
        current = self.scores.get(config, every)
        result = SearchResult(config, float(current.mean()), None)  # type: ignore[arg-type]
        self._point(result, config, current)
        while True:
            found, certificate = self._improve(config, current)
            if found is None:
                result.certificate = certificate
                break
            swap, losses = found
            config = apply(config, swap)
            result.accepted.append(
                {
                    "restored": self.names((swap[0],))[0],
                    "removed": self.names((swap[1],))[0],
                    "loss": float(losses.mean()),
                    "gain": float(current.mean() - losses.mean()),
                }
            )
            current = losses
            self._point(result, config, current)
            self.step(float(current.mean()))
        result.removed, result.loss = config, float(current.mean())
        return result

    def _point(self, result: SearchResult, config: Config, current: np.ndarray) -> None:
        result.trajectory.append(
            {
                "step": len(result.trajectory),
                "loss": float(current.mean()),
                "forward_passes": round(self._spent(), 3),
                "removed": self.names(config),
            }
        )

    def _improve(
        self, config: Config, current: np.ndarray
    ) -> tuple[tuple[Swap, np.ndarray] | None, Certificate]:
        """The first swap found that lowers the mean loss (with its losses on every sample), or
        None and the certificate of what was shown."""
        swaps = self._order(config, self.space.swaps(config))
        bases = self._bases(config, swaps)
        chunks = self._chunks(current)
        total = float(current.sum())
        shown = {"settled": 0, "by_bound": 0, "best": math.inf}

        def certificate(local: bool, reason: str) -> Certificate:
            best = shown["best"]
            return Certificate(
                local, len(swaps), int(shown["settled"]), int(shown["by_bound"]),
                float(current.mean()), None if math.isinf(best) else float(best), reason,
            )  # fmt: skip

        def settle(swap: Swap) -> np.ndarray | None:
            """The swap's losses on every sample when it improves; None (and counted) when not."""
            verdict, full = self._settle(config, swap, chunks, total, current)
            if verdict == "better":
                return full
            shown["settled"] += 1
            shown["by_bound"] += verdict == "bound"
            if full is not None:
                shown["best"] = min(shown["best"], float(full.mean()))
            return None

        waiting: list[Swap] = []
        for swap in swaps:  # climbing: first chunk only; those better there are scored in full
            if self._over_budget():
                return None, certificate(False, "the search's budget of forward passes is spent")
            self.rebase(bases[swap])
            rows = chunks[0]
            values = self.scores.get(apply(config, swap), rows)
            if len(chunks) > 1 and not self.scores.negative and values.sum() >= total:
                shown["settled"] += 1
                shown["by_bound"] += 1
            elif len(chunks) > 1 and values.mean() >= current[rows].mean():
                waiting.append(swap)
            elif (full := settle(swap)) is not None:
                return (swap, full), certificate(False, "improved")
        for swap in waiting:  # certifying: the rest of each waiting swap's samples, or the bound
            if self._over_budget():
                return None, certificate(False, "the search's budget of forward passes is spent")
            self.rebase(bases[swap])
            if (full := settle(swap)) is not None:
                return (swap, full), certificate(False, "improved")
        return None, certificate(True, "no single swap lowers the calibration loss")

    def _settle(
        self, config: Config, swap: Swap, chunks: list[np.ndarray], total: float, current: np.ndarray
    ) -> tuple[str, np.ndarray | None]:
        """Score ``swap`` chunk by chunk until the bound settles it or every sample is scored:
        ``("bound", None)``, or ``("better" | "worse", losses on every sample)``."""
        target = apply(config, swap)
        for upto in range(1, len(chunks) + 1):
            rows = np.concatenate(chunks[:upto])
            values = self.scores.get(target, rows)
            if upto < len(chunks) and not self.scores.negative and values.sum() >= total:
                return "bound", None
        full = self.scores.get(target, np.arange(self.n))
        return ("better" if full.mean() < current.mean() else "worse"), full
