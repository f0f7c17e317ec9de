"""Problem: an EnergyModel plus constraints (exactly M removed, protected and forced blocks) as a dimod CQM."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import dimod
import numpy as np

from .energy import EnergyModel
from .errors import BlockPruneError

REMOVE_COUNT = "remove_count"


@dataclass
class Problem:
    """Remove exactly ``remove`` blocks, never the ``protect`` ones, always the ``force`` ones.

    ``protect`` and ``force`` are sorted block indices; ``cqm`` is the same problem as a dimod
    ``ConstrainedQuadraticModel`` over binary variables labelled by block names.
    """

    energy: EnergyModel
    remove: int
    protect: tuple[int, ...] = ()
    force: tuple[int, ...] = ()
    cqm: dimod.ConstrainedQuadraticModel = field(default_factory=dimod.ConstrainedQuadraticModel, repr=False)

    @property
    def names(self) -> list[str]:
        return self.energy.block_names

    @property
    def free(self) -> np.ndarray:
        """Indices of the blocks the solver decides on (neither protected nor forced)."""
        fixed = set(self.protect) | set(self.force)
        return np.array([i for i in range(len(self.energy)) if i not in fixed], dtype=np.intp)

    @property
    def free_remove(self) -> int:
        """How many free blocks must be removed."""
        return self.remove - len(self.force)

    @property
    def num_configurations(self) -> int:
        """Number of feasible configurations, C(free, free_remove)."""
        return math.comb(len(self.free), self.free_remove)

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

    def feasible(self, X: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`is_feasible` over the rows of a (k, N) matrix."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.energy):
            return np.zeros(X.shape[0] if X.ndim == 2 else 0, dtype=bool)
        binary = ((X == 0) | (X == 1)).all(axis=1)
        count = X.sum(axis=1) == self.remove
        kept = (X[:, list(self.protect)] == 0).all(axis=1)
        gone = (X[:, list(self.force)] == 1).all(axis=1)
        return binary & count & kept & gone

    def is_feasible(self, x: np.ndarray) -> bool:
        """True when the 0/1 vector ``x`` removes exactly M blocks and respects protect/force."""
        x = np.asarray(x)
        return x.ndim == 1 and bool(self.feasible(x[None, :])[0])


def _count(remove: object) -> int:
    try:
        if isinstance(remove, bool):
            raise TypeError
        return operator.index(remove)
    except TypeError:
        raise BlockPruneError(
            f"the number of blocks to remove must be a whole number; got {remove!r}"
        ) from None


def build_problem(
    energy: EnergyModel, remove: int, *, protect: Iterable[str] = (), force: Iterable[str] = ()
) -> Problem:
    """Validate the request and build the :class:`Problem` (with its CQM)."""
    n = len(energy)
    m = _count(remove)
    if m <= 0 or m >= n:
        raise BlockPruneError(
            f"cannot remove {m} blocks: the energy model has {n} blocks; choose --remove between 1 and {n - 1}"
        )
    protect_names, force_names = list(dict.fromkeys(protect)), list(dict.fromkeys(force))
    keep, gone = energy.index(protect_names), energy.index(force_names)
    both = [name for name in protect_names if name in set(force_names)]
    if both:
        raise BlockPruneError(
            f"block {both[0]!r} is both protected and forced; drop it from --protect or --force"
        )
    if len(gone) > m:
        raise BlockPruneError(
            f"{len(gone)} blocks are forced but only {m} are removed; raise --remove to {len(gone)} or force fewer"
        )
    num_free = n - len(keep) - len(gone)
    if num_free < m - len(gone):
        raise BlockPruneError(
            f"only {num_free} blocks are free ({n} blocks, {len(keep)} protected, {len(gone)} forced) but "
            f"{m - len(gone)} more must go to remove {m}; protect fewer blocks or lower --remove"
        )
    return Problem(energy, m, tuple(sorted(keep)), tuple(sorted(gone)), _cqm(energy, m, keep, gone))


def _cqm(
    energy: EnergyModel, remove: int, protect: list[int], force: list[int]
) -> dimod.ConstrainedQuadraticModel:
    names = energy.block_names
    linear, quad = energy.qubo_terms()
    rows, cols = np.nonzero(quad)
    objective = dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear, (rows, cols, quad[rows, cols]), 0.0, "BINARY", variable_order=names
    )
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(objective)
    cqm.add_constraint_from_iterable([(name, 1) for name in names], "==", rhs=remove, label=REMOVE_COUNT)
    for i in protect:
        cqm.add_constraint_from_iterable([(names[i], 1)], "==", rhs=0, label=f"protect[{names[i]}]")
    for i in force:
        cqm.add_constraint_from_iterable([(names[i], 1)], "==", rhs=1, label=f"force[{names[i]}]")
    return cqm
