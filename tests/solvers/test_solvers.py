"""Solvers: exact top-K against brute force, SampleSet invariants, heuristic success rates, errors."""

from __future__ import annotations

import itertools
import time

import dimod
import numpy as np
import pytest

from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.solvers import solution_names, solve
from optimum_blockprune.solvers.exact import exhaustive
from optimum_blockprune.solvers.exact.exhaustive import ExhaustiveSolver
from optimum_blockprune.solvers.heuristic.dwave import TabuSolver
from optimum_blockprune.solvers.problem import Problem, build_problem
from optimum_blockprune.solvers.registry import solvers

SOLVERS = ("exhaustive", "bnb", "tabu", "sa", "auto")


def names(n: int) -> list[str]:
    return [f"layers.{i}" for i in range(n)]


def random_energy(n: int, rng: np.random.Generator) -> EnergyModel:
    """Random fields and random symmetric (indefinite) couplings."""
    J = rng.normal(size=(n, n))
    return EnergyModel(block_names=names(n), fields=rng.normal(size=n), couplings=(J + J.T) / 2)


def psd_energy(n: int, rng: np.random.Generator, samples: int = 64, with_fields: bool = True) -> EnergyModel:
    """Like the real ones: a gradient matrix A with correlated columns, H = AᵀA/m, optional fields."""
    A = rng.normal(size=(samples, 6)) @ rng.normal(size=(6, n)) * 0.7
    A += rng.normal(size=(samples, n)) * rng.uniform(0.3, 1.5, n)
    energy = EnergyModel(A, names(n))
    if not with_fields:
        return energy
    fields = rng.uniform(0, 2, n) * np.diag(energy.couplings).mean()
    return EnergyModel(A, names(n), fields=fields)


def brute_force(problem: Problem) -> list[tuple[float, tuple[str, ...]]]:
    """All feasible configurations as (energy, removed names), lowest first (itertools + EnergyModel)."""
    n = len(problem.names)
    combos = [
        sorted([*combo, *problem.force])
        for combo in itertools.combinations(problem.free.tolist(), problem.free_remove)
    ]
    X = np.zeros((len(combos), n))
    for row, combo in zip(X, combos, strict=True):
        row[combo] = 1
    energies = problem.energy.energies(X)
    return sorted(
        (float(e), tuple(problem.names[i] for i in combo)) for e, combo in zip(energies, combos, strict=True)
    )


def assert_valid(result: dimod.SampleSet, problem: Problem, top_k: int, solver: str) -> None:
    """Every invariant of the solver contract."""
    assert list(result.variables) == problem.names
    assert result.vartype is dimod.BINARY
    X = result.record.sample
    assert 1 <= len(X) <= top_k
    assert problem.feasible(X).all()
    assert len({tuple(row) for row in X}) == len(X)
    energies = result.record.energy
    assert (np.diff(energies) >= 0).all()
    for row, removed, e in zip(X, solution_names(result), energies, strict=True):
        assert removed == [problem.names[i] for i in np.flatnonzero(row)]
        assert e == pytest.approx(problem.energy.energy(removed), rel=1e-12, abs=1e-12)
    info = result.info
    assert info["solver"] == solver and isinstance(info["optimal"], bool) and info["seconds"] >= 0
    assert info["lower_bound"] is None or info["lower_bound"] <= energies[0] + 1e-9


def test_builtin_solvers_are_registered() -> None:
    registry = solvers()
    assert set(SOLVERS) <= set(registry)
    assert all(registry[name].name == name for name in SOLVERS)


@pytest.mark.parametrize(
    ("n", "remove", "protect", "force"),
    [
        (12, 4, (), ()),
        (13, 1, (), ()),
        (11, 6, ("layers.2", "layers.10"), ("layers.0",)),
        (14, 5, ("layers.13",), ("layers.4", "layers.9")),
        (10, 9, (), ()),
        (9, 3, (), ("layers.1", "layers.5", "layers.7")),  # everything forced: one configuration
        (9, 4, ("layers.0", "layers.1", "layers.2", "layers.3", "layers.4"), ()),  # every free block goes
    ],
)
@pytest.mark.parametrize("kind", ["random", "psd", "psd+fields"])
def test_exhaustive_top_k_equals_brute_force(n, remove, protect, force, kind) -> None:
    rng = np.random.default_rng(n * 100 + remove)
    energy = (
        random_energy(n, rng) if kind == "random" else psd_energy(n, rng, with_fields=kind == "psd+fields")
    )
    problem = build_problem(energy, remove, protect=protect, force=force)
    top_k = 15
    result = ExhaustiveSolver().sample(problem, top_k=top_k)
    expected = brute_force(problem)[:top_k]
    assert_valid(result, problem, top_k, "exhaustive")
    assert [tuple(r) for r in solution_names(result)] == [names_ for _, names_ in expected]
    np.testing.assert_allclose(result.record.energy, [e for e, _ in expected], rtol=1e-12, atol=1e-12)
    assert result.info["optimal"] is True and result.info["lower_bound"] == pytest.approx(expected[0][0])


@pytest.mark.parametrize("block", [7, 64, 4096])
def test_exhaustive_matches_brute_force_across_chunk_sizes(block, monkeypatch) -> None:
    monkeypatch.setattr(exhaustive, "BLOCK", block)  # several head and tail chunks per split point
    rng = np.random.default_rng(block)
    energy = psd_energy(17, rng)
    problem = build_problem(energy, 7, protect=["layers.16"])  # 8,008 configurations
    result = ExhaustiveSolver().sample(problem, top_k=40)
    expected = brute_force(problem)[:40]
    assert [tuple(r) for r in solution_names(result)] == [names_ for _, names_ in expected]
    np.testing.assert_allclose(result.record.energy, [e for e, _ in expected], rtol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_honours_the_contract(solver) -> None:
    rng = np.random.default_rng(11)
    energy = psd_energy(16, rng)
    problem = build_problem(energy, 5, protect=["layers.0", "layers.15"], force=["layers.7"])
    result = solvers()[solver].sample(problem, top_k=8)
    assert_valid(result, problem, 8, solver)
    best = brute_force(problem)[0]
    assert result.first.energy == pytest.approx(best[0])
    if solver == "auto":
        assert result.info["used"] == "exhaustive" and result.info["optimal"] is True
    if solver == "bnb":
        assert result.info["optimal"] is True and result.info["lower_bound"] == pytest.approx(best[0])
    if solver in ("tabu", "sa"):
        assert result.info["optimal"] is False and result.info["lower_bound"] is None


@pytest.mark.parametrize("solver", SOLVERS)
def test_single_configuration_problems(solver) -> None:
    energy = random_energy(8, np.random.default_rng(2))
    result = solve(energy, 2, solver, force=["layers.3", "layers.6"])
    assert solution_names(result) == [["layers.3", "layers.6"]]
    assert result.first.energy == pytest.approx(energy.energy(["layers.3", "layers.6"]))


def test_tabu_finds_the_exhaustive_ground_state_on_95_of_100_instances() -> None:
    rng = np.random.default_rng(2024)
    tabu, exhaustive = TabuSolver(), ExhaustiveSolver()
    hits, seconds = 0, {"exhaustive": 0.0, "tabu": 0.0}
    for i in range(100):
        energy = psd_energy(30, rng, with_fields=bool(i % 2))
        problem = build_problem(energy, 8)
        exact = exhaustive.sample(problem, top_k=1)
        heuristic = tabu.sample(problem, top_k=10)
        seconds["exhaustive"] += exact.info["seconds"]
        seconds["tabu"] += heuristic.info["seconds"]
        assert problem.feasible(heuristic.record.sample).all()
        assert heuristic.first.energy >= exact.first.energy - 1e-9
        hits += heuristic.first.energy <= exact.first.energy + 1e-9
    print(f"tabu ground state on {hits}/100; mean seconds { ({k: v / 100 for k, v in seconds.items()}) }")
    assert hits >= 95


def test_sa_finds_the_ground_state_on_small_instances() -> None:
    rng = np.random.default_rng(5)
    for i in range(10):
        energy = random_energy(12, rng) if i % 2 else psd_energy(12, rng)
        problem = build_problem(energy, 4, protect=["layers.11"])
        result = solve(energy, 4, "sa", top_k=5, protect=["layers.11"])
        assert_valid(result, problem, 5, "sa")
        assert result.first.energy == pytest.approx(brute_force(problem)[0][0])


def test_heuristics_repair_a_weak_penalty_and_are_deterministic() -> None:
    energy = psd_energy(20, np.random.default_rng(9))
    problem = build_problem(energy, 6)
    for solver in ("tabu", "sa"):
        weak = solve(energy, 6, solver, penalty=1e-6)  # penalised optimum is far from 6 removed
        assert (weak.info["penalty"], weak.info["feasible_fraction"]) == (1e-6, 0.0)
        assert_valid(weak, problem, 10, solver)
        assert weak.first.energy == pytest.approx(solve(energy, 6, "exhaustive").first.energy)
        first, second = solve(energy, 6, solver, seed=3), solve(energy, 6, solver, seed=3)
        np.testing.assert_array_equal(first.record.sample, second.record.sample)


def test_auto_switches_to_branch_and_bound_above_the_threshold() -> None:
    energy = psd_energy(20, np.random.default_rng(4))
    small = solve(energy, 5)
    large = solve(energy, 5, threshold=100, seed=1)
    assert (small.info["used"], small.info["optimal"]) == ("exhaustive", True)
    assert (large.info["used"], large.info["optimal"]) == ("bnb", True)
    np.testing.assert_array_equal(large.record.sample, small.record.sample)
    cut = solve(energy, 5, threshold=100, node_limit=1)  # stopped early: tabu's incumbents, a bound
    assert cut.info["used"] == "bnb" and cut.info["lower_bound"] <= cut.first.energy + 1e-12


def test_exhaustive_timing_n30_m8() -> None:
    problem = build_problem(psd_energy(30, np.random.default_rng(0)), 8)
    started = time.perf_counter()
    result = ExhaustiveSolver().sample(problem, top_k=10)
    print(f"exhaustive N=30 M=8 (5,852,925 configurations): {time.perf_counter() - started:.3f} s")
    assert result.info["num_configurations"] == 5_852_925 and len(result) == 10


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_exhaustive_refuses_too_many_configurations() -> None:
    energy = random_energy(30, np.random.default_rng(0))
    with pytest.raises(BlockPruneError) as exc:
        solve(energy, 8, "exhaustive", limit=1_000_000)
    assert "5,852,925 configurations (limit 1,000,000); use --solver tabu" in one_line(exc)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "gurobi"}, "unknown solver 'gurobi'; registered solvers: auto, bnb, "),
        ({"solver": "tabu", "sweeps": 3}, "solver 'tabu' does not accept option(s) sweeps; accepted: "),
        ({"solver": "exhaustive", "top_k": 0}, "top_k must be a positive whole number; got 0"),
        ({"solver": "sa", "top_k": 2.5}, "top_k must be a positive whole number"),
        ({"solver": "tabu", "num_reads": 0}, "num_reads must be at least 1; got 0"),
        ({"remove": 0}, "choose --remove between 1 and 9"),
        ({"protect": ["layers.42"]}, "unknown block 'layers.42'"),
    ],
)
def test_bad_solve_calls_give_one_line_errors(kwargs, match) -> None:
    energy = random_energy(10, np.random.default_rng(0))
    kwargs = {"remove": 3, **kwargs}
    with pytest.raises(BlockPruneError) as exc:
        solve(energy, **kwargs)
    assert match in one_line(exc)


# --------------------------------------------------------------------- per-kind counts and budgets
def sublayer_energy(layers: int, rng: np.random.Generator, psd: bool = True) -> EnergyModel:
    """layers.i.attn / layers.i.mlp blocks with distinct parameter counts (mlp about twice attn)."""
    block_names = [f"layers.{i}.{k}" for i in range(layers) for k in ("attn", "mlp")]
    n = len(block_names)
    params = rng.integers(10_000, 20_000, size=n) * np.tile([1, 2], layers)
    if psd:
        base = psd_energy(n, rng)
        return EnergyModel(
            base.sources["A"], block_names, fields=base.fields, num_params=params, sources=base.sources
        )
    J = rng.normal(size=(n, n))
    return EnergyModel(
        block_names=block_names, fields=rng.normal(size=n), couplings=(J + J.T) / 2, num_params=params
    )


def brute_force_general(problem: Problem) -> list[tuple[float, tuple[str, ...]]]:
    """Every feasible configuration of any constraint kind (all 2^N vectors, direct checks)."""
    n = len(problem.names)
    X = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    kinds = np.array(problem.energy.kinds)
    ok = (X[:, list(problem.protect)] == 0).all(axis=1) & (X[:, list(problem.force)] == 1).all(axis=1)
    if problem.counts is not None:
        for kind in set(kinds):
            ok &= X[:, kinds == kind].sum(axis=1) == problem.counts.get(kind, 0)
    elif problem.remove is not None:
        ok &= X.sum(axis=1) == problem.remove
    if problem.min_params is not None:
        ok &= X.astype(np.int64) @ problem.energy.num_params >= problem.min_params
    X = X[ok]
    energies = problem.energy.energies(X)
    return sorted(
        (float(e), tuple(problem.names[i] for i in np.flatnonzero(x)))
        for e, x in zip(energies, X, strict=True)
    )


GENERAL_REQUESTS = [
    ({"remove": {"attn": 2, "mlp": 2}}, (), ()),
    ({"remove": {"mlp": 3}}, ("layers.0.mlp",), ("layers.5.mlp",)),
    ({"remove": {"attn": 3, "mlp": 1}}, (), ("layers.2.attn",)),
    ({"min_params": 100_000}, (), ()),
    ({"min_params": 150_000}, ("layers.6.mlp",), ("layers.1.attn",)),
    ({"remove": 4, "min_params": 130_000}, (), ()),
    ({"remove": {"attn": 2, "mlp": 3}, "min_params": 120_000}, ("layers.3.mlp",), ()),
]


@pytest.mark.parametrize(("request_", "protect", "force"), GENERAL_REQUESTS)
@pytest.mark.parametrize("psd", [True, False])
def test_exhaustive_top_k_equals_brute_force_for_every_constraint_kind(request_, protect, force, psd) -> None:
    rng = np.random.default_rng(len(str(request_)) + psd)
    energy = sublayer_energy(7, rng, psd=psd)  # 14 blocks: 16,384 vectors for the brute force
    problem = build_problem(energy, **request_, protect=protect, force=force)
    result = ExhaustiveSolver().sample(problem, top_k=12)
    expected = brute_force_general(problem)[:12]
    assert_valid(result, problem, 12, "exhaustive")
    assert [tuple(r) for r in solution_names(result)] == [names_ for _, names_ in expected]
    np.testing.assert_allclose(result.record.energy, [e for e, _ in expected], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["bnb", "tabu", "sa", "auto"])
@pytest.mark.parametrize(("request_", "protect", "force"), GENERAL_REQUESTS)
def test_every_solver_returns_feasible_rows_for_every_constraint_kind(
    solver, request_, protect, force
) -> None:
    rng = np.random.default_rng(7 + len(str(request_)))
    energy = sublayer_energy(7, rng)
    problem = build_problem(energy, **request_, protect=protect, force=force)
    result = solvers()[solver].sample(problem, top_k=6)
    assert_valid(result, problem, 6, solver)
    assert result.first.energy == pytest.approx(brute_force_general(problem)[0][0])


def test_heuristics_repair_every_constraint_kind_from_a_useless_penalty() -> None:
    energy = sublayer_energy(8, np.random.default_rng(3))
    for request_ in (
        {"remove": {"attn": 3, "mlp": 2}},
        {"min_params": 120_000},
        {"remove": 5, "min_params": 150_000},
    ):
        problem = build_problem(energy, **request_)
        best = ExhaustiveSolver().sample(problem, top_k=1).first.energy
        for solver in ("tabu", "sa"):
            result = solve(energy, **request_, solver=solver, penalty=1e-9)
            assert_valid(result, problem, 10, solver)
            assert result.first.energy == pytest.approx(best)
