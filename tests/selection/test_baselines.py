"""Peer baselines: valid configurations of the requested size on every architecture, and each score
checked against a direct computation on a tiny model."""

from __future__ import annotations

import copy
import json
import math
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from architectures import ARCHITECTURES, gated_and_pruned, save_pruned_model, tiny_arch_model
from conftest import tiny_model

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.scoring import per_sample_loss
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.gates import Gates
from optimum_blockprune.model.pruned_format import load_pruned
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.pruner import BlockPruner
from optimum_blockprune.selection import methods
from optimum_blockprune.selection.baselines import (
    BASELINES,
    angular_distances,
    residual_states,
    select_baseline,
    similarity_scores,
)

IDS = torch.randint(3, 300, (4, 12), generator=torch.Generator().manual_seed(0))
DATA = CalibrationData(IDS, torch.ones_like(IDS))


@cache
def arch_model(model_type: str):
    return tiny_arch_model(model_type)


def loss(model, data: CalibrationData = DATA) -> float:
    with torch.no_grad():
        return float(
            per_sample_loss(model(data.input_ids).logits, data.input_ids, data.attention_mask).mean()
        )


def test_registry_lists_every_method():
    assert tuple(methods()) == ("energy", *BASELINES)


@pytest.mark.parametrize("method", list(BASELINES))
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_every_baseline_gives_a_valid_configuration(model_type, method, tmp_path):
    model = arch_model(model_type)
    adapter = get_adapter(model)
    granularity = BASELINES[method].granularities[0]
    blocks = adapter.blocks(model, granularity)
    names = [b.name for b in blocks]
    result = select_baseline(method, model, adapter, DATA, 2, granularity=granularity)
    assert len(result.removed) == len(set(result.removed)) == 2
    assert set(result.removed) <= set(names)
    assert result.cost.forward_passes >= 0 and result.cost.seconds >= 0
    _, pruned, physical = gated_and_pruned(model, blocks, result.removed, IDS)
    save_pruned_model(pruned, tmp_path)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path).eval()(IDS).logits, physical)


@pytest.mark.parametrize("method", [m for m, spec in BASELINES.items() if "sublayer" in spec.granularities])
def test_counts_per_kind_protect_and_force(method):
    model = arch_model("llama")
    adapter = get_adapter(model)
    result = select_baseline(
        method,
        model,
        adapter,
        DATA,
        {"attn": 2, "mlp": 1},
        granularity="sublayer",
        protect=["layers.3.attn"],
        force=["layers.0.mlp"],
    )
    kinds = sorted(parse_block_name(n)[1] for n in result.removed)
    assert kinds == ["attn", "attn", "mlp"]
    assert "layers.0.mlp" in result.removed and "layers.3.attn" not in result.removed


def test_mixed_granularity_never_takes_a_layer_with_its_own_branch():
    model = arch_model("llama")
    for method in ("shortgpt", "taylor", "random", "last"):
        removed = select_baseline(method, model, get_adapter(model), DATA, 3, granularity="mixed").removed
        layers = [parse_block_name(n) for n in removed]
        whole = {i for i, k in layers if k == "layer"}
        assert not any(i in whole and k != "layer" for i, k in layers), (method, removed)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("angular", {"granularity": "sublayer"}, "works at granularity layer"),
        ("sleb", {"granularity": "sublayer"}, "works at granularity layer"),
        ("blockpruner", {"granularity": "layer"}, "works at granularity sublayer"),
        ("angular", {"force": ["layers.1"]}, "cannot force"),
        ("angular", {"protect": ["layers.1", "layers.2"], "remove": 3}, "no window of 3 layers"),
        ("shortgpt", {"remove": 4}, "cannot remove 4 of 4 blocks"),
        ("last", {"protect": ["layers.0", "layers.1", "layers.2"]}, "only 1 of the 2 requested"),
        ("taylor", {"force": ["layers.9"]}, "unknown block 'layers.9'"),
        ("nonsense", {}, "unknown method 'nonsense'"),
    ],
)
def test_impossible_requests_give_one_line_errors(method, kwargs, message):
    model = arch_model("llama")
    kwargs = {"remove": 2, **kwargs}
    remove = kwargs.pop("remove")
    with pytest.raises(BlockPruneError, match=message) as info:
        select_baseline(method, model, get_adapter(model), DATA, remove, **kwargs)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ scores against direct computations


def hidden_states(model) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(IDS, output_hidden_states=True).hidden_states


def test_shortgpt_score_is_one_minus_cosine_of_layer_input_and_output():
    model = tiny_model("llama", 5)
    adapter = get_adapter(model)
    hs = hidden_states(model)
    scores = similarity_scores(model, adapter, DATA, adapter.blocks(model, "layer"))
    # hidden_states[i] is layer i's input; the last entry is after the final norm, so the last
    # layer's score is checked against the final norm's input below.
    for i in range(4):
        expected = 1 - float(F.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean())
        assert scores[i] == pytest.approx(expected, abs=1e-5)
    captured = []
    handle = adapter.final_norm(model).register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    try:
        hidden_states(model)
    finally:
        handle.remove()
    expected = 1 - float(F.cosine_similarity(hs[4], captured[0], dim=-1).mean())
    assert scores[4] == pytest.approx(expected, abs=1e-5)


def test_sublayer_score_uses_the_residual_stream_around_each_branch():
    model = tiny_model("llama", 3)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model, "sublayer")
    hs = hidden_states(model)
    mid = []  # the residual stream between attention and MLP: the input of post_attention_layernorm
    handles = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a: mid.append(a[0]))
        for layer in adapter.decoder_layers(model)
    ]
    try:
        hidden_states(model)
    finally:
        for handle in handles:
            handle.remove()
    scores = similarity_scores(model, adapter, DATA, blocks)
    for i in range(2):  # layers whose output is hidden_states[i + 1] (before the final norm)
        attn = 1 - float(F.cosine_similarity(hs[i], mid[i], dim=-1).mean())
        mlp = 1 - float(F.cosine_similarity(mid[i], hs[i + 1], dim=-1).mean())
        names = [b.name for b in blocks]
        assert scores[names.index(f"layers.{i}.attn")] == pytest.approx(attn, abs=1e-5)
        assert scores[names.index(f"layers.{i}.mlp")] == pytest.approx(mlp, abs=1e-5)


def test_angular_distance_and_window_match_a_direct_computation():
    model = tiny_model("llama", 6)
    adapter = get_adapter(model)
    hs = hidden_states(model)
    states = residual_states(model, adapter, DATA)
    n = 2
    d = angular_distances(states, n)
    for start in range(6 - n):  # windows that end before the last layer's output
        cos = F.cosine_similarity(hs[start][:, -1], hs[start + n][:, -1], dim=-1).clamp(-1, 1)
        assert d[start] == pytest.approx(float((torch.arccos(cos) / math.pi).mean()), abs=1e-5)
    result = select_baseline("angular", model, adapter, DATA, n)
    best = int(np.argmin(d))
    assert result.removed == [f"layers.{best}", f"layers.{best + 1}"]


def physical_loss(model, removed: list[str]) -> float:
    pruned = copy.deepcopy(model)
    get_adapter(pruned).remove_blocks(pruned, removed)
    return loss(pruned)


def test_sleb_picks_the_argmin_of_real_removal_losses_step_by_step():
    model = tiny_model("llama", 5)
    result = select_baseline("sleb", model, get_adapter(model), DATA, 2)
    first = min(range(5), key=lambda i: physical_loss(model, [f"layers.{i}"]))
    assert result.removed[0] == f"layers.{first}"
    rest = [i for i in range(5) if i != first]
    second = min(rest, key=lambda i: physical_loss(model, [f"layers.{first}", f"layers.{i}"]))
    assert result.removed[1] == f"layers.{second}"
    assert [s["removed"] for s in result.steps] == [result.removed[:1], result.removed]


def test_blockpruner_picks_the_argmin_over_sublayers():
    model = tiny_model("llama", 3)
    result = select_baseline("blockpruner", model, get_adapter(model), DATA, 1, granularity="sublayer")
    names = [b.name for b in get_adapter(model).blocks(model, "sublayer")]
    assert result.removed == [min(names, key=lambda n: physical_loss(model, [n]))]


def test_last_picks_the_last_blocks_around_protected_ones():
    model = arch_model("llama")
    adapter = get_adapter(model)
    assert sorted(select_baseline("last", model, adapter, DATA, 2).removed) == ["layers.2", "layers.3"]
    protected = select_baseline("last", model, adapter, DATA, 2, protect=["layers.3"]).removed
    assert sorted(protected) == ["layers.1", "layers.2"]


def test_iterative_shortgpt_recomputes_scores_after_each_removal():
    model = tiny_model("llama", 6)
    adapter = get_adapter(model)
    result = select_baseline("shortgpt-iterative", model, adapter, DATA, 2)
    first_scores = similarity_scores(model, adapter, DATA, adapter.blocks(model, "layer"))
    first = int(np.argmin(first_scores))
    assert result.removed[0] == f"layers.{first}"
    pruned = copy.deepcopy(model)
    get_adapter(pruned).remove_blocks(pruned, [f"layers.{first}"])
    kept = [i for i in range(6) if i != first]
    rescored = similarity_scores(pruned, get_adapter(pruned), DATA, get_adapter(pruned).blocks(pruned))
    assert result.removed[1] == f"layers.{kept[int(np.argmin(rescored))]}"
    assert result.cost.forward_passes == 2


def test_taylor_score_is_minus_the_gate_derivative():
    model = tiny_model("llama", 4)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model, "layer")
    result = select_baseline("taylor", model, adapter, DATA, 1)
    eps = 1e-3
    for k in range(len(blocks)):
        values = []
        for g in (1 + eps, 1 - eps):
            with Gates(model, adapter, blocks) as gates:
                gates.values = torch.ones(len(blocks))
                gates.values[k] = g
                values.append(loss(model))
        derivative = (values[0] - values[1]) / (2 * eps)
        assert result.scores[k] == pytest.approx(-derivative, rel=2e-2, abs=1e-3)
    assert result.removed == [blocks[int(np.argmin(result.scores))].name]
    assert (result.cost.forward_passes, result.cost.backward_passes) == (1, 1)


def test_random_is_seeded():
    model = arch_model("llama")
    adapter = get_adapter(model)
    picks = {tuple(select_baseline("random", model, adapter, DATA, 2, seed=s).removed) for s in range(8)}
    assert len(picks) > 1
    again = select_baseline("random", model, adapter, DATA, 2, seed=3).removed
    assert again == select_baseline("random", model, adapter, DATA, 2, seed=3).removed


# ------------------------------------------------------------------ through the pruner


def test_pruner_records_the_method_and_its_cost(tmp_path, tokenizer, corpus):
    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(corpus))
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 6), tokenizer=tokenizer)
    config = BlockPruneConfig(
        remove=2, method="sleb", calibration=str(text), num_samples=4, seq_len=16, batch_size=2
    )
    result = pruner.prune(config, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "blockprune_report.json").read_text())
    assert report["method"] == "sleb" and len(report["removed"]) == 2
    assert report["cost"]["forward_passes"] > 1 and report["cost"]["backward_passes"] == 0
    assert json.loads((tmp_path / "out" / "blockprune_config.json").read_text())["method"] == "sleb"
    reloaded = load_pruned(result.path).eval()
    assert len(reloaded.model.layers) == 4
    assert report["pruned_loss"] == pytest.approx(loss(reloaded, pruner.calibration(config)), rel=1e-5)
    with pytest.raises(BlockPruneError, match="takes a block count"):
        pruner.select(BlockPruneConfig(param_ratio=0.2, method="shortgpt", calibration=str(text)))
    with pytest.raises(BlockPruneError, match="method must be one of"):
        BlockPruneConfig(remove=2, method="nope")


def test_prune_cli_method_flag(tmp_path, tiny_model_dir, text_file):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).with_name("optimum-cli"))
    common = [cli, "blockprune", "prune", "--model", str(tiny_model_dir), "--calibration", str(text_file)]
    common += ["--num-samples", "4", "--seq-len", "16", "--batch-size", "2", "--remove", "2"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [*common, "--method", "angular", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "chosen by method angular: 1 forward passes, 0 backward passes" in proc.stdout
    report = json.loads((tmp_path / "out" / "blockprune_report.json").read_text())
    first = int(report["removed"][0].split(".")[1])
    assert report["method"] == "angular" and report["removed"] == [f"layers.{first}", f"layers.{first + 1}"]
    proc = subprocess.run(
        [*common, "--method", "angular", "--granularity", "sublayer", "--output", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error:" in line] == [
        "optimum-cli blockprune prune: error: method 'angular' works at --granularity layer, not 'sublayer'; "
        "pass --granularity layer or choose another method"
    ]
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ the architecture's own rules


@pytest.mark.parametrize("method", [*BASELINES, "energy"])
def test_no_method_removes_every_attention_layer_of_a_hybrid(method, tokenizer, corpus, tmp_path):
    """Nemotron-H (layers 2 and 5 attention) cannot decode without one, nor with its MoE layer 1
    first: 4 of its 6 layers removed must keep an attention layer and layer 0, whichever method
    chooses, and the result must prune and reload."""
    model = copy.deepcopy(arch_model("nemotron_h"))
    adapter = get_adapter(model)
    granularity = "sublayer" if method == "blockpruner" else "layer"
    if method == "energy":
        text = tmp_path / "cal.txt"
        text.write_text("\n\n".join(corpus))
        config = BlockPruneConfig(
            remove=4, granularity=granularity, calibration=str(text), num_samples=4, seq_len=12, batch_size=2
        )
        removed = BlockPruner(model, tokenizer, adapter).select(config).removed
    else:
        removed = select_baseline(method, model, adapter, DATA, 4, granularity=granularity).removed
    assert len(set(removed)) == 4
    assert adapter.removal_error(model, removed) is None
    gone = {parse_block_name(n)[0] for n in removed}
    assert not {2, 5} <= gone and 0 not in gone, removed
    blocks = adapter.blocks(model, granularity)
    _, pruned, physical = gated_and_pruned(model, blocks, removed, IDS)
    save_pruned_model(pruned, tmp_path / "pruned")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "pruned").eval()(IDS).logits, physical)


def test_energy_rounds_skip_a_ground_state_the_adapter_refuses(tokenizer, corpus, tmp_path):
    """A round whose lowest-energy configuration the adapter refuses takes the lowest allowed one
    instead, and the final choice is never refused."""
    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(corpus))
    config = BlockPruneConfig(remove=3, calibration=str(text), num_samples=4, seq_len=12, batch_size=2)
    model = tiny_model("llama", 6)
    free = BlockPruner(model, tokenizer, get_adapter(model)).select(config)
    first = free.rounds[0]["candidates"][free.rounds[0]["chosen"]]["removed"]
    banned = first[0]

    class Refusing(type(get_adapter(model))):
        def removal_error(self, model, names):
            return f"{banned} must stay" if banned in names else None

    refusing = Refusing()
    result = BlockPruner(model, tokenizer, refusing).select(config)
    assert banned not in result.removed and len(result.removed) == 3
    for round_ in result.rounds:
        assert all(banned not in c["removed"] for c in round_["candidates"])
    with pytest.raises(BlockPruneError, match=f"{banned} must stay"):
        refusing.remove_blocks(copy.deepcopy(model), [banned])

    class RefusingAll(type(get_adapter(model))):
        def removal_error(self, model, names):
            return "nothing may go"

    with pytest.raises(BlockPruneError, match=r"candidates is refused \(nothing may go\)") as info:
        BlockPruner(model, tokenizer, RefusingAll()).select(config)
    assert "\n" not in str(info.value)
