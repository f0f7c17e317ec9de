"""Problem: an EnergyModel plus constraints, as a dimod CQM and in a generic linear form for solvers.

Constraints: exactly M blocks removed (``remove=M``), or exactly so many of each kind
(``remove={"attn": 2, "mlp": 3}``; kinds not named are never removed), and/or a parameter budget
(the removed blocks hold at least ``min_params`` parameters); ``protect`` blocks are never removed,
``force`` blocks always are.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import dimod
import numpy as np

from optimum_blockprune.blocks import KINDS
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError

REMOVE_COUNT = "remove_count"
MIN_PARAMS = "min_params"


def kind_label(kind: str) -> str:
    """CQM / constraint label of the per-kind count of ``kind``."""
    return f"{REMOVE_COUNT}[{kind}]"


@dataclass(frozen=True, eq=False)
class LinearConstraint:
    """``Σ_j weights[j]·y[j]  sense  rhs`` over the free blocks (``y = x[problem.free]``).

    ``weights`` are integers (int64), ``sense`` is ``"=="`` or ``">="``, and ``rhs`` already
    accounts for the forced blocks.
    """

    label: str
    weights: np.ndarray
    sense: str
    rhs: int

    def holds(self, Y: np.ndarray) -> np.ndarray:
        """Whether each row of a (k, free) 0/1 matrix satisfies the constraint (exact integers)."""
        lhs = np.asarray(Y).astype(np.int64) @ self.weights
        return lhs == self.rhs if self.sense == "==" else lhs >= self.rhs


@dataclass(eq=False)
class Problem:
    """Minimise the energy over removal vectors under the constraints.

    ``remove`` is the total number of removed blocks when it is fixed (a count, or the sum of
    per-kind ``counts``), ``None`` with only a parameter budget. ``protect`` / ``force`` are sorted
    block indices; ``excluded`` are the blocks of kinds that ``counts`` does not name (never
    removed). ``cqm`` is the same problem as a dimod ``ConstrainedQuadraticModel`` over binary
    variables labelled by block names. Solvers work over the ``free`` blocks with
    :meth:`reduced` and :attr:`constraints` (or the structured :attr:`groups` and :attr:`budget`).
    """

    energy: EnergyModel
    remove: int | None
    protect: tuple[int, ...] = ()
    force: tuple[int, ...] = ()
    cqm: dimod.ConstrainedQuadraticModel = field(default_factory=dimod.ConstrainedQuadraticModel, repr=False)
    counts: dict[str, int] | None = None
    min_params: int | None = None
    excluded: tuple[int, ...] = ()

    @property
    def names(self) -> list[str]:
        return self.energy.block_names

    @cached_property
    def kept(self) -> tuple[int, ...]:
        """Blocks that stay: protected ones and those of kinds ``counts`` does not name."""
        return tuple(sorted(set(self.protect) | set(self.excluded)))

    @cached_property
    def free(self) -> np.ndarray:
        """Indices of the blocks the solver decides on (neither kept nor forced)."""
        fixed = set(self.kept) | set(self.force)
        return np.array([i for i in range(len(self.energy)) if i not in fixed], dtype=np.intp)

    @property
    def free_remove(self) -> int | None:
        """How many free blocks must be removed (``None`` when only a budget is given)."""
        return None if self.remove is None else self.remove - len(self.force)

    @cached_property
    def groups(self) -> list[tuple[np.ndarray, int | None]]:
        """Partition of the free blocks (positions in :attr:`free`) with the number to remove from
        each: one group for a total count, one per kind for per-kind counts, and one group with
        ``None`` (any number) when only a budget is given."""
        n = len(self.free)
        if self.counts is None:
            return [(np.arange(n), self.free_remove)]
        kinds = np.array(self.energy.kinds, dtype=object)[self.free]
        out = []
        for kind, count in self.counts.items():
            members = np.flatnonzero(kinds == kind)
            forced = sum(self.energy.kinds[i] == kind for i in self.force)
            if len(members):
                out.append((members, count - forced))
        return out

    @cached_property
    def budget(self) -> tuple[np.ndarray, int] | None:
        """``(weights, rhs)``: the free blocks' parameter counts must add up to at least ``rhs``
        (``min_params`` minus the forced blocks' parameters); ``None`` without a budget."""
        if self.min_params is None:
            return None
        params = self.energy.num_params.astype(np.int64)
        return params[self.free], int(self.min_params - params[list(self.force)].sum())

    @cached_property
    def constraints(self) -> tuple[LinearConstraint, ...]:
        """Every constraint as an integer linear (in)equality over the free blocks."""
        n = len(self.free)
        out = []
        for members, count in self.groups:
            if count is None:
                continue
            weights = np.zeros(n, dtype=np.int64)
            weights[members] = 1
            label = (
                REMOVE_COUNT if self.counts is None else kind_label(self.energy.kinds[self.free[members[0]]])
            )
            out.append(LinearConstraint(label, weights, "==", int(count)))
        if self.budget is not None:
            out.append(LinearConstraint(MIN_PARAMS, self.budget[0].copy(), ">=", self.budget[1]))
        return tuple(out)

    @property
    def num_configurations(self) -> int:
        """Number of feasible configurations when there is no budget; with one, an upper bound
        (configurations that meet the counts, or that have enough blocks to reach the budget)."""
        total = 1
        for members, count in self.groups:
            if count is None:
                weights, rhs = self.budget
                low = min_blocks(weights, rhs)
                total *= sum(math.comb(len(members), k) for k in range(low, len(members) + 1))
            else:
                total *= math.comb(len(members), count)
        return total

    def reduced(self) -> tuple[float, np.ndarray, np.ndarray]:
        """``(offset, fields, couplings)`` of the energy over the free blocks, forced ones set to 1."""
        h, J = self.energy.fields, self.energy.couplings
        free, force = self.free, np.array(self.force, dtype=np.intp)
        offset = float(h[force].sum() + J[np.ix_(force, force)].sum())
        fields = h[free] + 2 * J[np.ix_(free, force)].sum(axis=1)
        return offset, fields, J[np.ix_(free, free)].copy()

    def expand(self, Y: np.ndarray) -> np.ndarray:
        """Full (k, N) int8 removal vectors from (k, free) 0/1 rows over the free blocks."""
        Y = np.asarray(Y)
        X = np.zeros((Y.shape[0], len(self.energy)), dtype=np.int8)
        X[:, self.free] = Y
        X[:, list(self.force)] = 1
        return X

    def holds(self, Y: np.ndarray) -> np.ndarray:
        """Whether each row of a (k, free) 0/1 matrix satisfies every constraint."""
        Y = np.asarray(Y)
        ok = np.ones(len(Y), dtype=bool)
        for constraint in self.constraints:
            ok &= constraint.holds(Y)
        return ok

    def feasible(self, X: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`is_feasible` over the rows of a (k, N) matrix."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.energy):
            return np.zeros(X.shape[0] if X.ndim == 2 else 0, dtype=bool)
        binary = ((X == 0) | (X == 1)).all(axis=1)
        kept = (X[:, list(self.kept)] == 0).all(axis=1)
        gone = (X[:, list(self.force)] == 1).all(axis=1)
        ok = binary & kept & gone
        ok[ok] = self.holds(X[ok][:, self.free].astype(np.int64))
        return ok

    def is_feasible(self, x: np.ndarray) -> bool:
        """True when the 0/1 vector ``x`` meets every constraint."""
        x = np.asarray(x)
        return x.ndim == 1 and bool(self.feasible(x[None, :])[0])


def min_blocks(weights: np.ndarray, rhs: int) -> int:
    """Fewest blocks whose weights can reach ``rhs`` (largest first)."""
    if rhs <= 0:
        return 0
    reach = np.cumsum(np.sort(np.asarray(weights, dtype=np.int64))[::-1])
    return int(np.searchsorted(reach, rhs)) + 1


def _whole(value: object, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise BlockPruneError(f"{what} must be a whole number; got {value!r}") from None


def _count(remove: object) -> int:
    return _whole(remove, "the number of blocks to remove")


def build_problem(
    energy: EnergyModel,
    remove: int | Mapping[str, int] | None = None,
    *,
    min_params: int | None = None,
    protect: Iterable[str] = (),
    force: Iterable[str] = (),
) -> Problem:
    """Validate the request and build the :class:`Problem` (with its CQM).

    ``remove``: a block count, or a mapping kind -> count (``layer``, ``attn``, ``mlp``, ``moe``,
    ``mamba``); ``min_params``: the removed blocks must hold at least this many parameters.
    """
    n = len(energy)
    if remove is None and min_params is None:
        raise BlockPruneError(
            "say how much to remove: give remove (a block count or counts per kind) or min_params"
        )
    protect_names, force_names = list(dict.fromkeys(protect)), list(dict.fromkeys(force))
    keep, gone = energy.index(protect_names), energy.index(force_names)
    both = [name for name in protect_names if name in set(force_names)]
    if both:
        raise BlockPruneError(
            f"block {both[0]!r} is both protected and forced; drop it from --protect or --force"
        )
    counts: dict[str, int] | None = None
    excluded: list[int] = []
    total: int | None = None
    if isinstance(remove, Mapping):
        counts = _kind_counts(energy, remove, keep, gone, min_params is not None)
        excluded = [i for i, kind in enumerate(energy.kinds) if kind not in counts]
        total = sum(counts.values())
    elif remove is not None:
        total = _count(remove)
        if total <= 0 or total >= n:
            raise BlockPruneError(
                f"cannot remove {total} blocks: the energy model has {n} blocks; "
                f"choose --remove between 1 and {n - 1}"
            )
        if len(gone) > total:
            raise BlockPruneError(
                f"{len(gone)} blocks are forced but only {total} are removed; "
                f"raise --remove to {len(gone)} or force fewer"
            )
        num_free = n - len(keep) - len(gone)
        if num_free < total - len(gone):
            raise BlockPruneError(
                f"only {num_free} blocks are free ({n} blocks, {len(keep)} protected, {len(gone)} forced) but "
                f"{total - len(gone)} more must go to remove {total}; protect fewer blocks or lower --remove"
            )
    budget = None if min_params is None else _budget(energy, min_params)
    problem = Problem(
        energy,
        total,
        tuple(sorted(keep)),
        tuple(sorted(gone)),
        counts=counts,
        min_params=budget,
        excluded=tuple(excluded),
    )
    if budget is not None:
        _check_budget(problem)
    problem.cqm = _cqm(problem)
    return problem


def _kind_counts(
    energy: EnergyModel, remove: Mapping[str, int], keep: list[int], gone: list[int], has_budget: bool
) -> dict[str, int]:
    kinds = energy.kinds
    counts: dict[str, int] = {}
    for kind, value in remove.items():
        if kind not in KINDS:
            raise BlockPruneError(
                f"unknown block kind {kind!r} in remove; use counts per kind of {', '.join(KINDS)}"
            )
        count = _whole(value, f"the number of {kind!r} blocks to remove")
        if count < 0:
            raise BlockPruneError(f"cannot remove {count} {kind!r} blocks; give a count of 0 or more")
        counts[kind] = count
    total = sum(counts.values())
    if total == 0 and not has_budget:
        raise BlockPruneError("remove names no blocks to remove; give a positive count for at least one kind")
    if total >= len(energy):
        raise BlockPruneError(
            f"cannot remove {total} blocks: the energy model has {len(energy)} blocks; lower the counts in remove"
        )
    for i in gone:
        if kinds[i] not in counts:
            raise BlockPruneError(
                f"block {energy.block_names[i]!r} is forced but remove names no {kinds[i]!r} blocks; "
                f"add {kinds[i]!r} to remove or drop it from --force"
            )
    for kind, count in counts.items():
        of_kind = sum(k == kind for k in kinds)
        protected = sum(kinds[i] == kind for i in keep)
        forced = sum(kinds[i] == kind for i in gone)
        if forced > count:
            raise BlockPruneError(
                f"{forced} {kind!r} blocks are forced but only {count} are removed; "
                f"raise remove[{kind!r}] to {forced} or force fewer"
            )
        num_free = of_kind - protected - forced
        if num_free < count - forced:
            raise BlockPruneError(
                f"only {num_free} {kind!r} blocks are free ({of_kind} {kind!r} blocks, {protected} protected, "
                f"{forced} forced) but {count - forced} more must go; protect fewer or lower remove[{kind!r}]"
            )
    return counts


def _budget(energy: EnergyModel, min_params: object) -> int:
    budget = _whole(min_params, "min_params")
    if budget <= 0:
        raise BlockPruneError(f"min_params must be a positive number of parameters; got {budget}")
    if not energy.num_params.any():
        raise BlockPruneError(
            "the energy model has no parameter counts, so min_params cannot be checked; "
            "rebuild it with analyze (which records them) or give remove instead"
        )
    if (energy.num_params < 0).any():
        raise BlockPruneError("the energy model has negative parameter counts; rebuild it with analyze")
    return budget


def _check_budget(problem: Problem) -> None:
    """One-line error when no configuration meeting the counts can reach the budget."""
    weights, rhs = problem.budget
    reach = 0
    for members, count in problem.groups:
        w = np.sort(weights[members])[::-1]
        reach += int(w.sum() if count is None else w[:count].sum())
    if reach < rhs:
        most = int(problem.min_params - rhs + reach)
        how = "lower min_params" if problem.remove is None else "lower min_params or remove more blocks"
        raise BlockPruneError(
            f"the removed blocks can hold at most {most:,} parameters but min_params is "
            f"{problem.min_params:,}; {how}"
        )


def _cqm(problem: Problem) -> dimod.ConstrainedQuadraticModel:
    energy = problem.energy
    names = energy.block_names
    linear, quad = energy.qubo_terms()
    rows, cols = np.nonzero(quad)
    objective = dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (rows, cols, quad[rows, cols]), 0.0, "BINARY", variable_order=names
    )
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(objective)
    if problem.counts is None and problem.remove is not None:
        cqm.add_constraint_from_iterable(
            [(name, 1) for name in names], "==", rhs=problem.remove, label=REMOVE_COUNT
        )
    elif problem.counts is not None:
        kinds = energy.kinds
        for kind in dict.fromkeys(kinds):  # kinds present, in block order
            cqm.add_constraint_from_iterable(
                [(name, 1) for name, k in zip(names, kinds, strict=True) if k == kind],
                "==",
                rhs=problem.counts.get(kind, 0),
                label=kind_label(kind),
            )
    if problem.min_params is not None:
        cqm.add_constraint_from_iterable(
            [(name, int(p)) for name, p in zip(names, energy.num_params, strict=True) if p],
            ">=",
            rhs=problem.min_params,
            label=MIN_PARAMS,
        )
    for i in problem.protect:
        cqm.add_constraint_from_iterable([(names[i], 1)], "==", rhs=0, label=f"protect[{names[i]}]")
    for i in problem.force:
        cqm.add_constraint_from_iterable([(names[i], 1)], "==", rhs=1, label=f"force[{names[i]}]")
    return cqm


def typical_count(problem: Problem) -> int:
    """Number of free blocks a feasible configuration typically removes (for scales and starts)."""
    if problem.free_remove is not None:
        return problem.free_remove
    weights, rhs = problem.budget
    return max(1, min_blocks(weights, rhs))


def random_starts(problem: Problem, reads: int, seed: int) -> np.ndarray:
    """(reads, free) 0/1 rows that meet the counts (budget-only: the typical number of blocks)."""
    n = len(problem.free)
    rng = np.random.default_rng(seed)
    starts = np.zeros((reads, n), dtype=np.int8)
    for members, k in problem.groups:
        k = typical_count(problem) if k is None else k
        order = np.argsort(rng.random((reads, len(members))), axis=1)
        np.put_along_axis(starts, members[order[:, :k]], 1, axis=1)
    return starts
