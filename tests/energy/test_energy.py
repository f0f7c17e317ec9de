"""EnergyModel: stored energies equal a direct recomputation; save/load; corrupt files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optimum_blockprune import BlockPruneError, EnergyModel

NAMES = [f"layers.{i}" for i in range(7)]


def _random_A(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(40, 7)) @ rng.normal(size=(7, 7))


def test_paper_energy_is_mean_squared_summed_gradient():
    A = _random_A()
    energy = EnergyModel(A, NAMES)
    for removed in itertools.combinations(range(7), 3):
        direct = np.mean(A[:, list(removed)].sum(axis=1) ** 2)
        assert energy.energy([NAMES[i] for i in removed]) == pytest.approx(direct, rel=1e-12)
    np.testing.assert_allclose(energy.sources["H"], A.T @ A / 40)
    np.testing.assert_allclose(energy.sources["g"], A.mean(axis=0))


def test_energies_vectorised_equal_single_and_qubo():
    rng = np.random.default_rng(1)
    J = rng.normal(size=(7, 7))
    energy = EnergyModel(block_names=NAMES, fields=rng.normal(size=7), couplings=J)
    X = rng.integers(0, 2, size=(50, 7))
    linear, quad = energy.qubo_terms()
    for x, e in zip(X, energy.energies(X), strict=True):
        names = [NAMES[i] for i in np.flatnonzero(x)]
        assert e == pytest.approx(energy.energy(names), abs=1e-12)
        assert e == pytest.approx(x @ linear + x @ quad @ x, abs=1e-10)


def test_save_load_round_trip(tmp_path):
    A = _random_A(2)
    energy = EnergyModel(A, NAMES, num_params=range(7), metadata={"model_id": "tiny"})
    path = energy.save(tmp_path / "e.safetensors")
    loaded = EnergyModel.load(path)
    assert loaded.block_names == NAMES and loaded.variant == "fisher"
    assert loaded.metadata["model_id"] == "tiny"
    np.testing.assert_array_equal(loaded.couplings, energy.couplings)
    np.testing.assert_array_equal(loaded.sources["A"], A)
    np.testing.assert_array_equal(loaded.num_params, np.arange(7))
    assert loaded.energy(NAMES[:2]) == energy.energy(NAMES[:2])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_energy_file_gives_one_line_error(tmp_path, damage):
    path = EnergyModel(_random_A(), NAMES).save(tmp_path / "e.safetensors")
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64 + data[64:], "empty": b""}[damage]
    )
    with pytest.raises(BlockPruneError) as info:
        EnergyModel.load(path)
    assert "corrupt energy file" in str(info.value) and "\n" not in str(info.value)


def test_missing_energy_file_and_bad_shapes(tmp_path):
    with pytest.raises(BlockPruneError, match="not found"):
        EnergyModel.load(tmp_path / "nope.safetensors")
    with pytest.raises(BlockPruneError, match="shape"):
        EnergyModel(np.ones((3, 4)), NAMES)
    with pytest.raises(BlockPruneError, match="not a block name"):
        EnergyModel(block_names=["layer0"], fields=[1.0])
    with pytest.raises(BlockPruneError, match="unknown block"):
        EnergyModel(_random_A(), NAMES).energy(["layers.99"])
