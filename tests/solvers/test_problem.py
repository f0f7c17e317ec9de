"""Problem: the CQM matches the energy and the constraints; bad requests give one-line errors."""

from __future__ import annotations

import itertools

import dimod
import numpy as np
import pytest

from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers.problem import REMOVE_COUNT, build_problem


def names(n: int) -> list[str]:
    return [f"layers.{i}" for i in range(n)]


def random_energy(n: int, seed: int = 0) -> EnergyModel:
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(n, n))
    return EnergyModel(block_names=names(n), fields=rng.normal(size=n), couplings=J + J.T)


def test_cqm_objective_and_constraints_match_the_energy() -> None:
    energy = random_energy(12)
    problem = build_problem(energy, 4, protect=["layers.0"], force=["layers.11", "layers.3"])
    cqm = problem.cqm
    assert list(cqm.variables) == energy.block_names
    assert set(cqm.constraints) == {REMOVE_COUNT, "protect[layers.0]", "force[layers.3]", "force[layers.11]"}
    assert (problem.protect, problem.force) == ((0,), (3, 11))
    rng = np.random.default_rng(1)
    for x in rng.integers(0, 2, size=(50, 12)):
        sample = dict(zip(energy.block_names, x.tolist(), strict=True))
        removed = [n for n, v in sample.items() if v]
        assert cqm.objective.energy(sample) == pytest.approx(energy.energy(removed), rel=1e-9, abs=1e-9)
        assert cqm.check_feasible(sample) == problem.is_feasible(x)
    x = energy.vector(["layers.3", "layers.11", "layers.5", "layers.7"])
    assert problem.is_feasible(x) and cqm.check_feasible(dict(zip(energy.block_names, x, strict=True)))
    assert not problem.is_feasible(energy.vector(["layers.3", "layers.11", "layers.5"]))  # too few
    assert not problem.is_feasible(
        energy.vector(["layers.3", "layers.11", "layers.5", "layers.0"])
    )  # protected
    assert not problem.is_feasible(
        energy.vector(["layers.3", "layers.1", "layers.5", "layers.7"])
    )  # force missing
    assert not problem.is_feasible(np.full(12, 0.5))
    assert not problem.is_feasible(np.ones(11))


def test_exact_cqm_solver_agrees_with_brute_force() -> None:
    energy = random_energy(9, seed=3)
    problem = build_problem(energy, 3, protect=["layers.2"], force=["layers.8"])
    best = dimod.ExactCQMSolver().sample_cqm(problem.cqm).filter(lambda d: d.is_feasible).first
    brute = min(
        energy.energy([*(f"layers.{i}" for i in c), "layers.8"])
        for c in itertools.combinations([0, 1, 3, 4, 5, 6, 7], 2)
    )
    assert best.energy == pytest.approx(brute)
    assert problem.num_configurations == 21


def test_reduced_energy_and_expand_are_consistent() -> None:
    energy = random_energy(10, seed=5)
    problem = build_problem(energy, 4, protect=["layers.1", "layers.4"], force=["layers.0"])
    offset, h, J = problem.reduced()
    assert list(problem.free) == [2, 3, 5, 6, 7, 8, 9] and problem.free_remove == 3
    Y = np.random.default_rng(0).integers(0, 2, size=(20, 7))
    X = problem.expand(Y)
    assert (X[:, 0] == 1).all() and (X[:, [1, 4]] == 0).all()
    expected = offset + Y @ h + np.einsum("ki,ij,kj->k", Y, J, Y)
    np.testing.assert_allclose(energy.energies(X), expected, rtol=1e-10, atol=1e-10)


def test_duplicates_in_protect_and_force_are_ignored() -> None:
    problem = build_problem(
        random_energy(6), 2, protect=["layers.1", "layers.1"], force=["layers.2", "layers.2"]
    )
    assert (problem.protect, problem.force, problem.num_configurations) == ((1,), (2,), 4)


@pytest.mark.parametrize(
    ("remove", "protect", "force", "match"),
    [
        (
            0,
            (),
            (),
            r"cannot remove 0 blocks: the energy model has 8 blocks; choose --remove between 1 and 7",
        ),
        (-2, (), (), r"choose --remove between 1 and 7"),
        (8, (), (), r"cannot remove 8 blocks: the energy model has 8 blocks"),
        (9, (), (), r"has 8 blocks"),
        (2.5, (), (), r"whole number"),
        (True, (), (), r"whole number"),
        ("3", (), (), r"whole number"),
        (2, ("layers.99",), (), r"unknown block 'layers.99'; known blocks: layers.0"),
        (2, (), ("mlp.3",), r"unknown block 'mlp.3'"),
        (
            2,
            ("layers.1",),
            ("layers.1",),
            r"'layers.1' is both protected and forced; drop it from --protect or",
        ),
        (
            2,
            (),
            ("layers.1", "layers.2", "layers.3"),
            r"3 blocks are forced but only 2 are removed; raise --remove",
        ),
        (
            4,
            ("layers.0", "layers.1", "layers.2", "layers.3", "layers.4"),
            (),
            r"only 3 blocks are free \(8 blocks, 5 protected, 0 forced\) but 4 more must go",
        ),
    ],
)
def test_bad_requests_give_one_line_errors(remove, protect, force, match) -> None:
    with pytest.raises(BlockPruneError, match=match) as info:
        build_problem(random_energy(8), remove, protect=protect, force=force)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------- per-kind counts and budgets
def sublayer_energy(layers: int, seed: int = 0, moe: bool = False) -> EnergyModel:
    """Blocks layers.i.attn / layers.i.mlp (and .moe), random couplings, distinct parameter counts."""
    kinds = ("attn", "mlp", "moe") if moe else ("attn", "mlp")
    block_names = [f"layers.{i}.{k}" for i in range(layers) for k in kinds]
    rng = np.random.default_rng(seed)
    n = len(block_names)
    J = rng.normal(size=(n, n))
    params = rng.integers(1_000, 50_000, size=n)
    return EnergyModel(
        block_names=block_names, fields=rng.normal(size=n), couplings=J + J.T, num_params=params
    )


def brute_force_feasible(energy: EnergyModel, counts=None, total=None, min_params=None, protect=(), force=()):
    """Every 0/1 vector meeting the request, checked directly on kinds and parameter counts."""
    n = len(energy)
    X = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    kinds = np.array(energy.kinds)
    ok = np.ones(len(X), dtype=bool)
    if total is not None:
        ok &= X.sum(axis=1) == total
    if counts is not None:
        for kind in set(kinds):
            ok &= X[:, kinds == kind].sum(axis=1) == counts.get(kind, 0)
    if min_params is not None:
        ok &= X.astype(np.int64) @ energy.num_params >= min_params
    ok &= (X[:, energy.index(protect)] == 0).all(axis=1) & (X[:, energy.index(force)] == 1).all(axis=1)
    return X[ok]


@pytest.mark.parametrize(
    ("request_", "protect", "force"),
    [
        ({"remove": {"attn": 2, "mlp": 1}}, (), ()),
        ({"remove": {"mlp": 3}}, ("layers.0.mlp",), ("layers.2.mlp",)),
        ({"remove": {"attn": 1, "mlp": 0, "moe": 2}}, (), ("layers.1.moe",)),
        ({"min_params": 60_000}, ("layers.3.attn",), ()),
        ({"min_params": 90_000}, (), ("layers.0.attn",)),
        ({"remove": 3, "min_params": 70_000}, (), ()),
        ({"remove": {"attn": 2, "mlp": 2}, "min_params": 100_000}, ("layers.1.mlp",), ()),
    ],
)
def test_feasible_set_matches_a_direct_check(request_, protect, force) -> None:
    moe = "moe" in str(request_)
    energy = sublayer_energy(4 if moe else 6, seed=len(str(request_)), moe=moe)
    problem = build_problem(energy, **request_, protect=protect, force=force)
    remove = request_.get("remove")
    expected = brute_force_feasible(
        energy,
        counts=remove if isinstance(remove, dict) else None,
        total=remove if isinstance(remove, int) else None,
        min_params=request_.get("min_params"),
        protect=protect,
        force=force,
    )
    n = len(energy)
    X = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    got = X[problem.feasible(X)]
    np.testing.assert_array_equal(got, expected)
    assert len(expected) > 0
    # the CQM has the same feasible set
    for x in X[:: max(1, len(X) // 300)]:
        assert problem.cqm.check_feasible(dict(zip(energy.block_names, x.tolist(), strict=True))) == bool(
            problem.is_feasible(x)
        )
    # the generic linear constraints over the free blocks say the same as feasible()
    Y = X[:, problem.free]
    fixed = (X[:, list(problem.kept)] == 0).all(axis=1) & (X[:, list(problem.force)] == 1).all(axis=1)
    generic = fixed & np.all([c.holds(Y) for c in problem.constraints], axis=0)
    np.testing.assert_array_equal(generic, problem.feasible(X))
    for c in problem.constraints:
        assert c.weights.dtype == np.int64 and c.sense in ("==", ">=") and len(c.weights) == len(problem.free)
    # num_configurations is exact without a budget, an upper bound with one
    if "min_params" in request_:
        assert problem.num_configurations >= len(expected)
    else:
        assert problem.num_configurations == len(expected)


def test_constraint_labels_and_the_cqm_of_per_kind_counts_and_a_budget() -> None:
    energy = sublayer_energy(5, seed=2)
    problem = build_problem(energy, {"attn": 2}, min_params=30_000, force=["layers.4.attn"])
    assert set(problem.cqm.constraints) == {
        "remove_count[attn]",
        "remove_count[mlp]",
        "min_params",
        "force[layers.4.attn]",
    }
    assert problem.cqm.constraints["min_params"].sense.value == ">="
    assert [c.label for c in problem.constraints] == ["remove_count[attn]", "min_params"]
    assert problem.remove == 2 and problem.free_remove == 1
    assert problem.excluded == tuple(i for i, k in enumerate(energy.kinds) if k == "mlp")
    weights, rhs = problem.budget
    assert rhs == 30_000 - int(energy.num_params[energy.index(["layers.4.attn"])[0]])
    np.testing.assert_array_equal(weights, energy.num_params[problem.free])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"say how much to remove: give remove \(a block count or counts per kind\) or min_params"),
        ({"remove": {"ffn": 2}}, r"unknown block kind 'ffn' in remove; use counts per kind of layer, attn"),
        ({"remove": {"attn": 2.5}}, r"the number of 'attn' blocks to remove must be a whole number"),
        ({"remove": {"attn": -1}}, r"cannot remove -1 'attn' blocks"),
        ({"remove": {"attn": 0}}, r"remove names no blocks to remove"),
        ({"remove": {"moe": 1}}, r"only 0 'moe' blocks are free \(0 'moe' blocks, 0 protected, 0 forced\)"),
        ({"remove": {"attn": 5}, "protect": ["layers.0.attn"]}, r"only 3 'attn' blocks are free \(4 'attn'"),
        (
            {"remove": {"attn": 1}, "force": ["layers.0.attn", "layers.1.attn"]},
            r"2 'attn' blocks are forced but only 1 are removed; raise remove\['attn'\] to 2",
        ),
        (
            {"remove": {"attn": 1}, "force": ["layers.0.mlp"]},
            r"block 'layers.0.mlp' is forced but remove names no 'mlp' blocks",
        ),
        ({"remove": {"attn": 4, "mlp": 4}}, r"cannot remove 8 blocks: the energy model has 8 blocks"),
        ({"min_params": 0}, r"min_params must be a positive number of parameters; got 0"),
        ({"min_params": "many"}, r"min_params must be a whole number"),
        (
            {"min_params": 10**9},
            r"the removed blocks can hold at most .* parameters but min_params is 1,000,000,000; lower min_params$",
        ),
        ({"remove": 1, "min_params": 60_000}, r"can hold at most .*; lower min_params or remove more blocks"),
    ],
)
def test_bad_per_kind_and_budget_requests_give_one_line_errors(kwargs, match) -> None:
    energy = sublayer_energy(4, seed=1)
    with pytest.raises(BlockPruneError, match=match) as info:
        build_problem(energy, **kwargs)
    assert "\n" not in str(info.value)


def test_a_budget_needs_parameter_counts() -> None:
    with pytest.raises(BlockPruneError, match=r"the energy model has no parameter counts, so min_params"):
        build_problem(random_energy(6), min_params=10)
