"""The latency budget: block costs timed by surgery, solved as a knapsack, end to end on the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from architectures import tiny_arch_model
from conftest import tiny_model
from helpers import CAL, assert_user_error, run

from optimum_blockprune.blocks import Block
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError, SettingError
from optimum_blockprune.model.latency import CostTable, _estimate_unmeasured, _within_dense, measure_costs
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.selection.energy import latency_budget, round_targets, weighted
from optimum_blockprune.solvers import solution_names, solve

#: A fixed cost table of six layers of unequal cost (seconds): deterministic, nothing timed.
COSTS = [0.31, 0.12, 0.205, 0.053, 0.247, 0.149]
DENSE = sum(COSTS) + 0.45
BLOCKS = [Block(i, "layer", 1000) for i in range(len(COSTS))]
NAMES = [b.name for b in BLOCKS]


def _table(costs=COSTS, dense=DENSE) -> CostTable:
    return CostTable("decode", 1, 16, "cpu", "float32", 1, 1, dense, dict(zip(NAMES, costs, strict=True)))


def _energy(seed: int = 0) -> EnergyModel:
    rng = np.random.default_rng(seed)
    couplings = rng.normal(0, 0.05, (6, 6))
    return EnergyModel(
        block_names=NAMES,
        fields=rng.uniform(0.1, 1.0, 6),
        couplings=(couplings + couplings.T) / 2 * (1 - np.eye(6)),
        num_params=[b.num_params for b in BLOCKS],
        variant="additive",
    )


@pytest.mark.parametrize("model_type, classes", [("llama", 3), ("qwen3_moe", 5)])
def test_cost_table_of_real_surgery(model_type, classes):
    model = tiny_model("llama", 4) if model_type == "llama" else tiny_arch_model(model_type)
    adapter = get_adapter(model, None)
    blocks = adapter.blocks(model, "mixed")
    table = measure_costs(model, adapter, blocks, "prefill", 2, 12, repeats=5, warmup=1)
    assert list(table.costs) == [b.name for b in blocks]
    assert all(c > 0 for c in table.costs.values())
    assert len(table.classes) == classes  # a hybrid MoE model has more cost classes than a plain one
    for entry in table.classes:  # every class loses half its blocks (at least one) in its copy
        assert len(entry["removed"]) == max(1, entry["blocks"] // 2)
    assert len(adapter.decoder_layers(model)) == len({b.layer for b in blocks})  # the model is intact
    layers = [n for n in table.costs if n.count(".") == 1]
    assert table.rest + sum(table.costs[n] for n in layers) == pytest.approx(table.dense)
    assert table.to_dict()["rest"] == table.rest and table.phase == "prefill" and table.batch == 2


def test_decode_table_of_a_layer_model():
    model = tiny_model("llama", 4)
    adapter = get_adapter(model, None)
    table = measure_costs(model, adapter, adapter.blocks(model, "layer"), "decode", 1, 8)
    assert len(set(table.costs.values())) == 1 and table.classes[0]["removed"] == ["layers.1", "layers.3"]
    assert table.predicted(NAMES[:2]) == pytest.approx(table.dense - 2 * table.costs["layers.0"])


def test_a_class_too_small_to_time_is_costed_by_its_parameters():
    classes = [
        {"num_params": 100, "removed": ["layers.1", "layers.3"], "seconds_saved": 0.4, "estimated": False},
        {"num_params": 10, "removed": ["layers.1.mlp"], "seconds_saved": -0.01, "estimated": True},
    ]
    _estimate_unmeasured(classes, "decode", 1.0)
    assert classes[1]["seconds_per_block"] == pytest.approx(0.02)  # 0.4 s / 200 params x 10 params
    with pytest.raises(BlockPruneError, match="saved no measurable time"):
        _estimate_unmeasured(classes[1:], "decode", 1.0)


def test_costs_that_outgrow_the_dense_time_are_scaled_into_it():
    table = _within_dense(_table(dense=0.7))  # the blocks add up to 1.08 s: noise
    assert table.rest == pytest.approx(0) and table.costs["layers.0"] == pytest.approx(
        0.31 * 0.7 / sum(COSTS)
    )
    assert _within_dense(_table()).costs["layers.0"] == COSTS[0]


@pytest.mark.parametrize("solver", ["exhaustive", "bnb", "tabu", "sa"])
@pytest.mark.parametrize("speedup", [1.2, 1.5, 2.0])
def test_speedup_budget_matches_brute_force(solver, speedup):
    table, energy = _table(), _energy()
    config = BlockPruneConfig(target_speedup=speedup)
    weights, need = latency_budget(table, config, BLOCKS, None, ())
    samples = solve(weighted(energy, weights), None, min_params=need, solver=solver, top_k=5)
    allowed = DENSE / speedup
    for names in solution_names(samples):
        assert table.predicted(names) <= allowed + 1e-9
    feasible = [
        set(c)
        for k in range(1, 7)
        for c in itertools.combinations(NAMES, k)
        if table.predicted(c) <= allowed + 1e-9
    ]
    best = min(feasible, key=lambda c: energy.energy(c))
    assert set(solution_names(samples)[0]) == best


def test_recentred_rounds_scale_the_latency_budget():
    weights, need = latency_budget(_table(), BlockPruneConfig(target_speedup=2.0), BLOCKS, None, ())
    rounds = round_targets(None, need, [], BLOCKS, "recentred", weights)
    budgets = [r[1] for r in rounds]
    assert len(rounds) > 1 and budgets == sorted(budgets) and budgets[-1] == need


def test_unreachable_budget_names_the_largest_speedup():
    config = BlockPruneConfig(target_speedup=5.0)
    with pytest.raises(SettingError, match=r"at most a 3\.05x speedup") as err:  # all layers but the cheapest
        latency_budget(_table(), config, BLOCKS, None, ())
    assert err.value.flagged().startswith("--target-speedup 5 is out of reach")
    with pytest.raises(SettingError, match="remove more blocks"):  # two layers save at most 0.557 s
        latency_budget(_table(), BlockPruneConfig(remove=2, target_speedup=1.6), BLOCKS, 2, ())
    with pytest.raises(SettingError, match="target_latency 0.1 is out of reach"):
        latency_budget(_table(), BlockPruneConfig(target_latency=0.1), BLOCKS, None, ())
    with pytest.raises(SettingError, match="met by the dense model already"):
        latency_budget(_table(), BlockPruneConfig(target_latency=2.0), BLOCKS, None, ())


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"target_speedup": 1.0}, "target_speedup must be a number above 1"),
        ({"target_latency": -1.0}, "target_latency must be a positive"),
        ({"target_speedup": 1.5, "param_ratio": 0.2}, "not both"),
        ({"target_speedup": 1.5, "latency_phase": "training"}, "latency_phase must be one of"),
        ({"target_speedup": 1.5, "latency_batch": 0}, "latency_batch must be"),
    ],
)
def test_bad_latency_settings(settings, fragment):
    with pytest.raises(SettingError, match=fragment):
        BlockPruneConfig(**settings)


def test_a_count_only_caller_refuses_a_latency_budget():
    with pytest.raises(BlockPruneError, match="only 'prune' with method energy"):
        BlockPruneConfig(target_speedup=1.5).removal_target(BLOCKS, 6000)


def test_prune_target_speedup_end_to_end(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    proc = run(
        "prune",
        "--model",
        str(tiny_model_dir),
        "--calibration",
        str(text_file),
        *CAL,
        "--target-speedup",
        "1.3",
        "--latency-context",
        "8",
        "--energy",
        "additive",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "blockprune_report.json").read_text())
    latency = report["cost"]["latency"]
    assert latency["phase"] == "decode" and latency["context"] == 8 and latency["batch"] == 1
    assert sorted(latency["costs"]) == sorted(f"layers.{i}" for i in range(6))
    removed = report["removed"]
    assert latency["dense"] - sum(latency["costs"][n] for n in removed) == pytest.approx(
        latency["predicted_seconds"]
    )
    assert latency["predicted_speedup"] >= 1.3
    assert report["config"]["target_speedup"] == 1.3


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--target-speedup", "0.9"], "--target-speedup must be a number above 1"),
        (["--target-speedup", "1.5", "--target-params", "1K"], "not both"),
        (["--target-speedup", "1.5", "--method", "shortgpt"], "not a latency budget"),
        (["--target-speedup", "50", "--energy", "additive"], "is out of reach"),
    ],
)
def test_bad_latency_flags_give_one_line(tmp_path, tiny_model_dir, text_file, args, fragment):
    proc = run(
        "prune",
        "--model",
        str(tiny_model_dir),
        "--calibration",
        str(text_file),
        *CAL,
        *args,
        "--output",
        str(tmp_path / "out"),
    )
    assert_user_error(proc, fragment)
