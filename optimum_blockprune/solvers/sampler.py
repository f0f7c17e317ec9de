"""Every registered solver as a ``dimod.Sampler``: ``sample(bqm, remove=...)`` and ``sample_cqm(cqm)``.

A CQM is read back into a :class:`~optimum_blockprune.problem.Problem`: its objective becomes an
:class:`~optimum_blockprune.energy.EnergyModel`, and its constraints must be of the kinds a
Problem has: ``Σ x == M`` over every variable (a count) or over every block of one kind (per-kind
counts, when the variables are block names), one ``Σ w_i x_i >= b`` with non-negative integer
weights (a budget: w become the parameter counts), and single variables fixed to 0 or 1.
Variables that are not block names are mapped to ``layers.0``, ``layers.1``, ... and back.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import dimod
import numpy as np

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers.problem import build_problem
from optimum_blockprune.solvers.registry import get_solver


class SolverSampler(dimod.Sampler):
    """A registered solver (by name, default ``bnb``) behind the dimod Sampler interface.

    ``top_k`` and the solver's options can be given at construction or per call.
    """

    def __init__(self, solver: str = "bnb", **defaults: Any) -> None:
        self.solver = get_solver(solver)
        self.defaults = defaults

    @property
    def parameters(self) -> dict[str, list]:
        return {"top_k": [], "remove": [], "min_params": [], **{o: [] for o in self.solver.options}}

    @property
    def properties(self) -> dict[str, Any]:
        return {"solver": self.solver.name}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
        """Lowest-energy configurations of a BQM under ``remove=`` (a count) and/or ``min_params=``
        (with ``num_params=`` per variable, in variable order)."""
        remove, min_params = kwargs.pop("remove", None), kwargs.pop("min_params", None)
        num_params = kwargs.pop("num_params", None)
        cqm = dimod.ConstrainedQuadraticModel()
        cqm.set_objective(bqm)
        if remove is not None:
            cqm.add_constraint_from_iterable([(v, 1) for v in bqm.variables], "==", rhs=remove)
        if min_params is not None:
            if num_params is None:
                raise BlockPruneError("min_params needs num_params (one parameter count per variable)")
            terms = [(v, int(p)) for v, p in zip(bqm.variables, num_params, strict=True) if p]
            cqm.add_constraint_from_iterable(terms, ">=", rhs=min_params)
        return self.sample_cqm(cqm, **kwargs)

    def sample_cqm(self, cqm: dimod.ConstrainedQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
        """Lowest-energy feasible configurations of a CQM of the supported kind (see module docs)."""
        options = {**self.defaults, **kwargs}
        top_k = options.pop("top_k", 10)
        energy, labels, offset = _energy(cqm)
        request = _request(cqm, energy, labels)
        problem = build_problem(
            energy, request["remove"], **{k: v for k, v in request.items() if k != "remove"}
        )
        result = self.solver.sample(problem, top_k=top_k, **options)
        samples = result.record.sample
        return dimod.SampleSet.from_samples(
            (samples, labels),
            vartype="BINARY",
            energy=result.record.energy + offset,
            info=dict(result.info),
            sort_labels=False,
        )


def _energy(cqm: dimod.ConstrainedQuadraticModel) -> tuple[EnergyModel, list[Hashable], float]:
    """(EnergyModel of the objective, variable labels in model order, constant offset)."""
    objective = cqm.objective
    if any(cqm.vartype(v) is not dimod.BINARY for v in cqm.variables):
        raise BlockPruneError("only binary variables are supported; use BINARY variables")
    labels = list(cqm.variables)
    names = _names(labels)
    index = {v: i for i, v in enumerate(labels)}
    n = len(labels)
    h, J = np.zeros(n), np.zeros((n, n))
    for v, bias in objective.iter_linear():
        h[index[v]] += bias
    for u, v, bias in objective.iter_quadratic():
        J[index[u], index[v]] += bias / 2
        J[index[v], index[u]] += bias / 2
    params = np.zeros(n, dtype=np.int64)
    for constraint in cqm.constraints.values():
        weights = _weights(constraint, index)
        if constraint.sense.value == ">=" and weights is not None and np.count_nonzero(weights) > 1:
            params = weights
    return (
        EnergyModel(block_names=names, fields=h, couplings=J, num_params=params),
        labels,
        float(objective.offset),
    )


def _names(labels: list[Hashable]) -> list[str]:
    try:
        for label in labels:
            parse_block_name(str(label))
        if all(isinstance(label, str) for label in labels):
            return [str(label) for label in labels]
    except ValueError:
        pass
    return [f"layers.{i}" for i in range(len(labels))]


def _weights(constraint: Any, index: dict) -> np.ndarray | None:
    """Integer weights of a linear constraint over all variables, or None if it is not linear."""
    lhs = constraint.lhs
    if getattr(lhs, "num_interactions", 0):
        return None
    weights = np.zeros(len(index))
    for v, bias in lhs.iter_linear():
        weights[index[v]] = bias
    rounded = np.round(weights)
    if not np.allclose(weights, rounded) or lhs.offset:
        return None
    return rounded.astype(np.int64)


def _request(cqm: dimod.ConstrainedQuadraticModel, energy: EnergyModel, labels: list) -> dict[str, Any]:
    """The build_problem arguments that reproduce the CQM's constraints (or a one-line error)."""
    index = {v: i for i, v in enumerate(labels)}
    kinds = np.array(energy.kinds)
    counts: dict[str, int] = {}
    total = None
    min_params = None
    protect, force = [], []
    for label, constraint in cqm.constraints.items():
        weights = _weights(constraint, index)
        sense, rhs = constraint.sense.value, float(constraint.rhs)
        support = np.flatnonzero(weights) if weights is not None else np.array([])
        if weights is None or not np.isclose(rhs, round(rhs)):
            raise BlockPruneError(
                f"constraint {label!r} is not linear with integer weights; it cannot be solved here"
            )
        rhs = int(round(rhs))
        if sense == "==" and len(support) == 1 and rhs in (0, weights[support[0]]):
            (force if rhs else protect).append(energy.block_names[support[0]])
        elif sense == "==" and (weights[support] == 1).all() and len(support) == len(labels):
            total = rhs
        elif (
            sense == "=="
            and (weights[support] == 1).all()
            and len(set(kinds[support])) == 1
            and (set(np.flatnonzero(kinds == kinds[support[0]])) == set(support.tolist()))
        ):
            counts[str(kinds[support[0]])] = rhs
        elif sense == ">=" and (weights >= 0).all() and min_params is None:
            min_params = rhs
        else:
            raise BlockPruneError(
                f"constraint {label!r} is not a block count, a per-kind count, a parameter budget or a "
                f"fixed block; it cannot be solved here"
            )
    if total is not None and counts:
        raise BlockPruneError("give either a total count or per-kind counts, not both")
    return {"remove": counts or total, "min_params": min_params, "protect": protect, "force": force}
