"""The methods benchmark's own measurements: its multiple-choice accuracy is lm-evaluation-harness's
``acc`` question by question, its bootstrap intervals hold the statistic, and ``--merge`` replaces
a part's cells and marks ties by interval overlap."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.pruner import BlockPruner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import methods  # noqa: E402

TASKS = ROOT / "examples" / "lm_eval_tasks"


@pytest.mark.parametrize("removed", [[], ["layers.0.mlp"], ["layers.1"]])
def test_multiple_choice_equals_lm_eval_acc(tokenizer, removed):
    from optimum_blockprune.output.lm_eval import run_tasks

    pruner = BlockPruner.from_pretrained(tiny_model("llama", 2), tokenizer=tokenizer)
    mc = methods.MultipleChoice(pruner)
    ours = mc.correct(removed)
    assert ours.shape == (len(mc.answers),) and set(np.unique(ours)) <= {0.0, 1.0}
    with Gates(pruner.model, pruner.adapter, mc.blocks) as gates:
        off = [mc.names.index(n) for n in removed]
        gates.values = removal_gates(len(mc.blocks), off) if off else None
        theirs = run_tasks(pruner.model, tokenizer, ["blockprune_mc"], [TASKS], batch_size=16)
    assert ours.mean() == pytest.approx(theirs["blockprune_mc"]["acc"], abs=1e-9)


def test_bootstrap_interval_holds_the_statistic():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 1.0, 200)
    low, high = methods.bootstrap(values, np.mean, 500)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)  # the normal interval
    assert methods.bootstrap(np.full(50, 2.0), np.mean, 100) == (2.0, 2.0)


def _row(method: str, budget: int, ppl: float, half: float) -> dict:
    return {
        "method": method,
        "granularity": "layer",
        "budget": budget,
        "perplexity": ppl,
        "ppl_low": ppl - half,
        "ppl_high": ppl + half,
        "mc_accuracy": 0.5,
        "forward_passes": 10.0,
        "seconds": 1.0,
    }


def test_merge_replaces_a_parts_cells_and_marks_ties(tmp_path, capsys):
    head = {
        "dense": {"perplexity": 20.0, "mc_accuracy": 0.7},
        "heldout_tokens": 16384,
        "calibration_tokens": 1024,
        "questions": 50,
    }
    out, part = tmp_path / "methods.json", tmp_path / "part.json"
    out.write_text(json.dumps({**head, "rows": [_row("sleb", 10, 30.0, 1.0), _row("energy", 10, 40.0, 1.0)]}))
    settings = {"out": str(tmp_path / "elsewhere" / "part.json")}
    part.write_text(json.dumps({**head, "settings": settings, "rows": [_row("energy", 10, 30.5, 1.0)]}))
    methods.merge(out, part)
    merged = json.loads(out.read_text())
    energy = [r for r in merged["rows"] if r["method"] == "energy"]
    assert [r["perplexity"] for r in energy] == [30.5]  # replaced, not added
    assert merged["parts"][0]["settings"]["out"] == "part.json"  # the file's name, no path
    table = capsys.readouterr().out
    assert "| sleb | **30.00 [29.00, 31.00]** |" in table
    assert "| energy | = 30.50 [29.50, 31.50] |" in table  # overlapping intervals: a tie
