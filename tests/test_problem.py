"""Problem: the CQM matches the energy and the constraints; bad requests give one-line errors."""

from __future__ import annotations

import itertools

import dimod
import numpy as np
import pytest

from optimum_blockprune.energy import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.problem import REMOVE_COUNT, build_problem


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
