"""The CP-SAT certifier plugin, through the core's public machinery only."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ortools")

from optimum_blockprune import BlockPruneError, EnergyModel, solve  # noqa: E402
from optimum_blockprune.solvers import solvers  # noqa: E402
from optimum_blockprune.solvers.problem import build_problem  # noqa: E402


def energy(n_layers: int, seed: int) -> EnergyModel:
    rng = np.random.default_rng(seed)
    names = [f"layers.{i}.{k}" for i in range(n_layers) for k in ("attn", "mlp")]
    n = len(names)
    J = rng.normal(size=(n, n))
    return EnergyModel(
        block_names=names,
        fields=rng.normal(size=n),
        couplings=(J + J.T) / 2,
        num_params=rng.integers(1_000, 5_000, size=n),
    )


def brute_force(problem, top_k):
    n = len(problem.names)
    X = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    X = X[problem.feasible(X)]
    return np.sort(problem.energy.energies(X))[:top_k]


def test_cpsat_is_registered_through_its_entry_point() -> None:
    assert "cpsat" in solvers() and solvers()["cpsat"].name == "cpsat"


@pytest.mark.parametrize(
    ("request_", "protect", "force"),
    [
        ({"remove": 4}, (), ()),
        ({"remove": {"attn": 2, "mlp": 1}}, ("layers.0.attn",), ("layers.5.mlp",)),
        ({"min_params": 9_000}, (), ()),
        ({"remove": 3, "min_params": 8_000}, (), ("layers.1.attn",)),
    ],
)
def test_cpsat_top_k_equals_brute_force(request_, protect, force) -> None:
    e = energy(6, seed=len(str(request_)))
    problem = build_problem(e, **request_, protect=protect, force=force)
    result = solve(e, **request_, solver="cpsat", top_k=5, protect=protect, force=force, time_limit=30)
    expected = brute_force(problem, 5)
    assert problem.feasible(result.record.sample).all()
    np.testing.assert_allclose(result.record.energy, expected, atol=10 * result.info["rounding_error"])
    info = result.info
    assert info["optimal"] is True and info["solver"] == "cpsat"
    assert info["lower_bound"] <= expected[0] + 1e-12 and info["rounding_error"] < 1e-4


def test_bad_options_give_one_line_errors() -> None:
    with pytest.raises(BlockPruneError, match=r"solver 'cpsat' does not accept option\(s\) sweeps") as exc:
        solve(energy(3, 0), 2, "cpsat", sweeps=3)
    assert "\n" not in str(exc.value)
