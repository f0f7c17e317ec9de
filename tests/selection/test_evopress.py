"""EvoPress: deterministic per seed, every visited configuration valid, the brute-force optimum of its
fitness on a tiny model, and through the CLI with the KL objective."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from helpers import CAL, run

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.errors import SettingError
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.plan import check_settings
from optimum_blockprune.selection.baselines import Quota, select_baseline
from optimum_blockprune.selection.evopress import EvoPress, default_generations, valid
from optimum_blockprune.selection.rules import Rules

IDS = torch.randint(3, 300, (4, 10), generator=torch.Generator().manual_seed(2))
DATA = CalibrationData(IDS, torch.ones_like(IDS))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", 4)


def quota(model, granularity, remove, protect=(), force=()):
    adapter = get_adapter(model)
    blocks = adapter.blocks(model, granularity)
    return Quota(Rules(model, adapter, blocks, protect, force), remove)


def test_a_seed_gives_the_same_search(model):
    def search(seed):
        scorer = LossScorer(model, get_adapter(model), DATA, 4, objective="kl")
        return select_baseline(
            "evopress", model, get_adapter(model), DATA, 2, scorer=scorer, seed=seed, generations=3
        )

    first, again = search(3), search(3)
    assert first.removed == again.removed and first.steps == again.steps
    assert len(first.steps) == 4  # the initial parent, then one point per generation
    work = [p["forward_passes"] for p in first.steps]
    assert work == sorted(work) and first.cost.forward_passes == pytest.approx(work[-1], abs=1e-3)
    assert all(p["fitness"] > 0 for p in first.steps)  # KL of a configuration that removes blocks


@pytest.mark.parametrize(
    ("granularity", "remove", "protect", "force"),
    [
        ("layer", 2, ["layers.3"], ["layers.1"]),
        ("sublayer", {"attn": 2, "mlp": 1}, ["layers.3.attn"], ["layers.0.mlp"]),
        ("mixed", 3, ["layers.2"], ["layers.0.attn"]),
        ("mixed", {"layer": 1, "mlp": 2}, [], []),
    ],
)
def test_every_visited_configuration_keeps_every_constraint(model, granularity, remove, protect, force):
    q = quota(model, granularity, remove, protect, force)
    scorer = LossScorer(model, get_adapter(model), DATA, 4)
    seen = []

    def fitness(config, rows):
        seen.append(config)
        return scorer.loss([q.blocks[k].name for k in config], samples=rows)

    EvoPress(q, fitness, len(DATA), seed=0).run(2)
    assert len(seen) > 5
    for config in seen:
        names = [q.blocks[k].name for k in config]
        assert valid(q, config), names
        assert set(force) <= set(names) and not set(protect) & set(names)
        layers = [parse_block_name(n) for n in names]
        whole = {i for i, k in layers if k == "layer"}
        assert not any(i in whole and k != "layer" for i, k in layers)  # never a layer and its branch
        if isinstance(remove, dict):
            assert sorted(k for _, k in layers) == sorted(k for k, c in remove.items() for _ in range(c))


@pytest.mark.parametrize(("granularity", "remove"), [("layer", 2), ("sublayer", 3), ("mixed", 2)])
def test_finds_the_brute_force_optimum_of_its_fitness(model, granularity, remove):
    q = quota(model, granularity, remove)
    scorer = LossScorer(model, get_adapter(model), DATA, 4, objective="kl")

    def fitness(config, rows):
        return scorer.loss([q.blocks[k].name for k in config], samples=rows)

    every = [c for c in itertools.combinations(range(len(q.blocks)), remove) if valid(q, c)]
    best = min(every, key=lambda c: fitness(c, np.arange(len(DATA))))
    # every stage on all samples: the search's own fitness is then the brute force's
    for seed in range(2):
        search = EvoPress(q, fitness, len(DATA), seed=seed, stages=((2, 1.0), (1, 1.0)), initial_share=1.0)
        assert search.run(8) == best


def test_default_generations_follow_the_paper_script():
    assert default_generations(32, 12) == 160  # Mistral-7B at 37.5 %: int(12 * 20 / 1.5)
    assert default_generations(30, 12) == 144 and default_generations(4, 1) == 2


def test_prune_with_evopress_on_kl_end_to_end(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    args = ["-m", str(tiny_model_dir), "-o", str(out), "--calibration", str(text_file), *CAL]
    proc = run(
        "prune", *args, "--method", "evopress", "--objective", "kl", "--granularity", "sublayer",
        "--remove", "attn=1,mlp=1", "--generations", "2", "--seed", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "blockprune_report.json").read_text())
    assert report["method"] == "evopress" and report["config"]["generations"] == 2
    assert sorted(parse_block_name(n)[1] for n in report["removed"]) == ["attn", "mlp"]
    trajectory = report["cost"]["trajectory"]
    assert [p["generation"] for p in trajectory] == [0, 1, 2]
    assert report["cost"]["forward_passes"] == pytest.approx(trajectory[-1]["forward_passes"], abs=0.01)


def test_generations_belong_to_evopress():
    with pytest.raises(SettingError, match="generations is the budget of --method evopress"):
        check_settings(BlockPruneConfig(remove=2, method="sleb", generations=3))
    with pytest.raises(SettingError, match="generations must be a whole number"):
        BlockPruneConfig(remove=2, method="evopress", generations=0)
