"""Branch and bound: exact top-K against exhaustive enumeration and brute force, valid bounds
whatever the stopping point, the DNN reformulation's identities, and the dimod Sampler adapter."""

from __future__ import annotations

import itertools

import dimod
import numpy as np
import pytest

from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers import SolverSampler, solution_names
from optimum_blockprune.solvers.exact.bnb import BranchAndBoundSolver
from optimum_blockprune.solvers.exact.exhaustive import ExhaustiveSolver
from optimum_blockprune.solvers.exact.qp import NodeQP, project_capped_simplex
from optimum_blockprune.solvers.exact.sdp import dnn
from optimum_blockprune.solvers.heuristic.dwave import TabuSolver
from optimum_blockprune.solvers.problem import Problem, build_problem


def names(n: int, kinds: tuple[str, ...] = ("layer",)) -> list[str]:
    if kinds == ("layer",):
        return [f"layers.{i}" for i in range(n)]
    return [f"layers.{i}.{k}" for i in range(n // len(kinds)) for k in kinds]


def gradient_like(n: int, rng: np.random.Generator, samples: int = 256, kinds=("layer",)) -> EnergyModel:
    """H = AᵀA/m from a gradient-like A: a few dominant directions, a tail, uneven block scales."""
    sigma = np.array([1.0, 0.65, 0.47, 0.32])
    A = (rng.normal(size=(samples, 4)) * sigma) @ rng.normal(size=(4, n)) + 0.5 * rng.normal(
        size=(samples, n)
    )
    A *= np.exp(rng.uniform(0, np.log(5), n))
    params = rng.integers(1_000, 4_000, size=n)
    return EnergyModel(A, names(n, kinds), num_params=params)


def indefinite(n: int, rng: np.random.Generator, kinds=("layer",)) -> EnergyModel:
    J = rng.normal(size=(n, n))
    params = rng.integers(1_000, 4_000, size=n)
    return EnergyModel(
        block_names=names(n, kinds), fields=rng.normal(size=n), couplings=(J + J.T) / 2, num_params=params
    )


def brute_force(problem: Problem, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top_k feasible rows (and energies) among all 2^N vectors, lowest first, ties by row."""
    n = len(problem.names)
    X = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    X = X[problem.feasible(X)]
    energies = problem.energy.energies(X)
    order = np.lexsort((*X.T[::-1], energies))[:top_k]
    return X[order], energies[order]


def assert_same_top_k(result: dimod.SampleSet, X: np.ndarray, energies: np.ndarray) -> None:
    np.testing.assert_allclose(result.record.energy, energies, rtol=1e-10, atol=1e-12)
    # equal energies may come in either order; the sets of configurations must agree
    assert {tuple(r) for r in result.record.sample} == {tuple(r) for r in X}


@pytest.mark.parametrize(
    ("n", "remove", "kind", "protect", "force"),
    [
        (24, 6, "gradient", (), ()),
        (28, 8, "gradient", ("layers.0",), ("layers.27",)),
        (20, 5, "indefinite", (), ("layers.3",)),
        (26, 4, "gradient-64", (), ()),
    ],
)
def test_bnb_top_k_equals_exhaustive(n, remove, kind, protect, force) -> None:
    rng = np.random.default_rng(n + remove)
    energy = (
        indefinite(n, rng)
        if kind == "indefinite"
        else gradient_like(n, rng, samples=64 if kind.endswith("64") else 256)
    )
    problem = build_problem(energy, remove, protect=protect, force=force)
    exact = ExhaustiveSolver().sample(problem, top_k=10)
    result = BranchAndBoundSolver().sample(problem, top_k=10, time_limit=300)
    assert_same_top_k(result, exact.record.sample, exact.record.energy)
    info = result.info
    assert info["optimal"] is True and info["proven"] == 10 and info["gap"] == 0.0
    assert info["lower_bound"] == pytest.approx(exact.first.energy)
    assert info["root_bound"] <= exact.first.energy + 1e-9
    assert info["psd"] is (kind != "indefinite")
    assert info["nodes"] >= 1 and info["seconds"] > 0


def test_bnb_top_20_on_32_blocks_equals_exhaustive() -> None:
    energy = gradient_like(32, np.random.default_rng(32), samples=2048)
    problem = build_problem(energy, 8)  # 10,518,300 configurations
    exact = ExhaustiveSolver().sample(problem, top_k=20)
    result = BranchAndBoundSolver().sample(problem, top_k=20, time_limit=300)
    assert result.info["optimal"] is True
    assert_same_top_k(result, exact.record.sample, exact.record.energy)


REQUESTS = [
    {"remove": 4},
    {"remove": {"attn": 2, "mlp": 3}},
    {"remove": {"mlp": 2}},
    {"min_params": 9_000},
    {"remove": 5, "min_params": 12_000},
    {"remove": {"attn": 2, "mlp": 2}, "min_params": 10_000},
]


@pytest.mark.parametrize("seed", range(12))
def test_bnb_equals_brute_force_on_random_instances_of_every_constraint_kind(seed) -> None:
    """Property test: random energies (PSD or not), random constraint kind, protect and force; the
    tree is forced to branch (tiny leaves) so every part of the search is exercised."""
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.choice([12, 14, 16]))
    kinds = ("attn", "mlp")
    energy = gradient_like(n, rng, samples=32, kinds=kinds) if seed % 2 else indefinite(n, rng, kinds)
    request = REQUESTS[seed % len(REQUESTS)]
    block_names = energy.block_names
    protect = [block_names[int(rng.integers(n))]] if seed % 3 == 0 else []
    force = (
        [b for b in [block_names[int(rng.integers(n))]] if b not in protect and b.endswith("mlp")]
        if seed % 4 == 1
        else []
    )
    problem = build_problem(energy, **request, protect=protect, force=force)
    top_k = int(rng.integers(1, 12))
    X, energies = brute_force(problem, top_k)
    # no incumbents and no local search: every configuration must come from the tree itself
    result = BranchAndBoundSolver().sample(
        problem, top_k=top_k, leaf_size=4, local_starts=0, incumbents=np.zeros((0, n)), time_limit=300
    )
    assert result.info["optimal"] is True
    assert problem.feasible(result.record.sample).all()
    assert_same_top_k(result, X, energies)
    assert result.info["nodes"] > 1


def test_a_stopped_search_returns_feasible_rows_a_valid_bound_and_never_worse_than_its_incumbents() -> None:
    energy = gradient_like(40, np.random.default_rng(7), samples=64)
    problem = build_problem(energy, 12, protect=["layers.0"])
    tabu = TabuSolver().sample(problem, top_k=10)
    result = BranchAndBoundSolver().sample(problem, top_k=10, node_limit=3, incumbents=tabu)
    info = result.info
    assert info["optimal"] is False and info["stopped"] == "node_limit"
    assert problem.feasible(result.record.sample).all()
    assert result.first.energy <= tabu.first.energy + 1e-12
    assert (result.record.energy <= tabu.record.energy + 1e-12).all()
    assert info["lower_bound"] <= result.first.energy and info["gap"] >= 0
    assert 0 <= info["proven"] <= len(result)


def test_the_dnn_reformulation_is_exact_on_feasible_points_and_valid_however_early_it_stops() -> None:
    rng = np.random.default_rng(3)
    energy = indefinite(18, rng)
    problem = build_problem(energy, 6)
    offset, h, J = problem.reduced()
    best = ExhaustiveSolver().sample(problem, top_k=1).first.energy
    Y = np.zeros((300, 18))
    for row in Y:
        row[rng.choice(18, 6, replace=False)] = 1
    f = Y @ h + np.einsum("ri,ij,rj->r", Y, J, Y)
    for iterations in (1, 10, 3000):
        ref = dnn(h, J, problem.groups, max_iter=iterations, trace=7)
        np.testing.assert_allclose(ref.value(Y), f, rtol=1e-9, atol=1e-9)
        assert np.linalg.eigvalsh(ref.quad)[0] >= 0 and (ref.pair >= 0).all()
        assert ref.bound + offset <= best + 1e-9
        # the QP of the convex part over the relaxation bounds every feasible configuration
        qp = NodeQP(2 * ref.quad, ref.lin, np.zeros(18, dtype=np.intp), [6])
        lo, hi = np.zeros(18), np.ones(18)
        y, _ = qp.solve(np.full(18, 0.5), lo, hi, max_iter=500)
        value, vertex = qp.bound(y, lo, hi)
        assert value + ref.const + offset <= best + 1e-9 and vertex.sum() == 6


def test_the_qp_bound_holds_at_any_point_and_projection_is_exact() -> None:
    rng = np.random.default_rng(5)
    n = 10
    M = rng.normal(size=(n, n))
    G, g = M @ M.T, rng.normal(size=n)
    group = np.array([0] * 5 + [1] * 5)
    qp = NodeQP(G, g, group, [2, 3])
    lo, hi = np.zeros(n), np.ones(n)
    lo[0] = hi[0] = 1.0  # a fixed block
    vertices = []
    for a in itertools.combinations(range(1, 5), 1):
        for b in itertools.combinations(range(5, 10), 3):
            v = np.zeros(n)
            v[[0, *a, *b]] = 1
            vertices.append(v)
    vertex_min = min(0.5 * v @ G @ v + g @ v for v in vertices)
    for _ in range(20):
        value, s = qp.bound(rng.uniform(-1, 2, n), lo, hi)  # any point, even outside the box
        assert value <= vertex_min + 1e-9
        assert s[0] == 1 and s[:5].sum() == 2 and s[5:].sum() == 3
    z = rng.normal(size=8) * 2
    y = project_capped_simplex(z, np.zeros(8), np.ones(8), 3.0)
    assert y.sum() == pytest.approx(3.0) and (y >= 0).all() and (y <= 1).all()
    # optimality of the projection: no feasible direction decreases the distance
    for _ in range(50):
        other = project_capped_simplex(rng.normal(size=8), np.zeros(8), np.ones(8), 3.0)
        assert np.sum((z - y) * (other - y)) <= 1e-9


# --------------------------------------------------------------------- dimod Sampler adapter
def test_every_solver_is_a_dimod_sampler_of_the_problems_cqm() -> None:
    energy = gradient_like(14, np.random.default_rng(2), kinds=("attn", "mlp"))
    problem = build_problem(energy, {"attn": 2, "mlp": 1}, min_params=5_000, force=["layers.3.attn"])
    expected = ExhaustiveSolver().sample(problem, top_k=5)
    for name in ("bnb", "exhaustive", "tabu", "auto"):
        sampler = SolverSampler(name, top_k=5)
        assert isinstance(sampler, dimod.Sampler) and sampler.properties == {"solver": name}
        result = sampler.sample_cqm(problem.cqm)
        assert list(result.variables) == energy.block_names
        assert result.first.energy == pytest.approx(expected.first.energy)
        assert all(problem.cqm.check_feasible(s) for s in result.samples())


def test_a_bqm_with_a_count_and_arbitrary_labels() -> None:
    rng = np.random.default_rng(4)
    Q = rng.normal(size=(9, 9))
    bqm = dimod.BinaryQuadraticModel.from_qubo(
        {(f"v{i}", f"v{j}"): Q[i, j] for i in range(9) for j in range(i, 9)}, 1.5
    )
    result = SolverSampler("bnb").sample(bqm, remove=3, top_k=4)
    exact = sorted(
        bqm.energy({f"v{i}": int(i in c) for i in range(9)}) for c in itertools.combinations(range(9), 3)
    )[:4]
    np.testing.assert_allclose(result.record.energy, exact, rtol=1e-12)
    assert set(result.variables) == {f"v{i}" for i in range(9)}
    for sample, e in zip(result.samples(), result.record.energy, strict=True):
        assert sum(sample.values()) == 3 and bqm.energy(sample) == pytest.approx(e)


def test_the_sampler_refuses_constraints_a_problem_cannot_express() -> None:
    cqm = dimod.ConstrainedQuadraticModel()
    x = [dimod.Binary(f"layers.{i}") for i in range(5)]
    cqm.set_objective(sum(x[i] * x[i + 1] for i in range(4)))
    cqm.add_constraint(x[0] + 2 * x[1] - x[2] <= 1, label="odd")
    with pytest.raises(BlockPruneError, match=r"constraint 'odd' is not a block count") as info:
        SolverSampler("bnb").sample_cqm(cqm)
    assert "\n" not in str(info.value)
    assert solution_names  # the public helper stays importable next to the sampler


# --------------------------------------------------------------------- independent certifier
def test_bnb_agrees_with_the_cpsat_certifier_when_it_is_installed() -> None:
    from optimum_blockprune.solvers.registry import solvers

    if "cpsat" not in solvers():
        pytest.skip("the optimum-blockprune-cpsat plugin is not installed")
    rng = np.random.default_rng(11)
    for energy, request in (
        (gradient_like(18, rng, samples=64), {"remove": 5}),
        (indefinite(16, rng, kinds=("attn", "mlp")), {"remove": {"attn": 2, "mlp": 2}, "min_params": 9_000}),
    ):
        problem = build_problem(energy, **request)
        certified = solvers()["cpsat"].sample(problem, top_k=5, time_limit=60)
        result = BranchAndBoundSolver().sample(problem, top_k=5, leaf_size=16, local_starts=0)
        assert certified.info["optimal"] is True and result.info["optimal"] is True
        np.testing.assert_allclose(
            result.record.energy, certified.record.energy, atol=10 * certified.info["rounding_error"]
        )
        assert certified.info["lower_bound"] <= result.first.energy + 1e-12
