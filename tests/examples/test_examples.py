"""Every script in examples/ runs at tiny scale: a tiny random model on disk, the tiny corpus."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from architectures import ARCHITECTURES, gated_and_pruned
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_blockprune import load_pruned
from optimum_blockprune.hookspecs import plugin_manager
from optimum_blockprune.model.registry import get_adapter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL = ["--num-samples", "4", "--seq-len", "16"]


def run_example(script: str, *args: str) -> str:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def removed_blocks(folder: Path) -> list[str]:
    return json.loads((folder / "blockprune_config.json").read_text())["removed_blocks"]


def prune_example(tmp_path: Path, model: Path, text: Path, remove: int = 2) -> Path:
    out = tmp_path / "pruned"
    stdout = run_example(
        "prune_model.py",
        "--model",
        str(model),
        "--remove",
        str(remove),
        "--calibration",
        str(text),
        *SMALL,
        "--output",
        str(out),
    )
    assert f"removed: {', '.join(removed_blocks(out))}" in stdout
    return out


def test_prune_model_example_writes_a_model_that_loads(tmp_path, tiny_model_dir, text_file):
    out = prune_example(tmp_path, tiny_model_dir, text_file)
    assert len(removed_blocks(out)) == 2
    pruned = AutoModelForCausalLM.from_pretrained(out)  # whole layers: a stock checkpoint
    assert pruned.config.num_hidden_layers == 4
    assert torch.equal(pruned.lm_head.weight, load_pruned(out).lm_head.weight)


def test_heal_example_trains_merges_and_saves(tmp_path, tiny_model_dir, text_file):
    pruned = prune_example(tmp_path, tiny_model_dir, text_file)
    healed = tmp_path / "healed"
    stdout = run_example(
        "heal_with_trainer.py",
        "--model",
        str(pruned),
        "--teacher",
        str(tiny_model_dir),
        "--data",
        str(text_file),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--lora-r",
        "4",
        "--output",
        str(healed),
    )
    assert "healed model saved" in stdout
    before, after = load_pruned(pruned), load_pruned(healed)
    assert after.config.num_hidden_layers == before.config.num_hidden_layers == 4
    assert not any(n.startswith("base_model") or "lora" in n for n, _ in after.named_parameters())
    changed = [n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert changed, "the merged LoRA update must change the weights"


def test_gradual_removal_example_removes_layers_while_training(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "gradual"
    stdout = run_example(
        "gradual_removal.py",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(text_file),
        "--schedule",
        "1:1,2:1",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        *SMALL,
        "--output",
        str(out),
    )
    assert "layers left: 4" in stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and len(removed_blocks(out)) == 2


def test_adapter_plugin_example_prunes_olmo2(tmp_path):
    """Registered the way an entry point registers it, the example adapter takes OLMo-2 (which the
    generic fallback refuses), and gating its blocks equals removing them."""
    spec = importlib.util.spec_from_file_location(
        "blockprune_olmo2", EXAMPLES / "adapter_plugin" / "blockprune_olmo2.py"
    )
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    config = AutoConfig.for_model("olmo2", **ARCHITECTURES["llama"][1])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    pm = plugin_manager()
    pm.register(plugin, name="blockprune_olmo2")
    try:
        adapter = get_adapter(model)
        assert adapter.name == "olmo2"
        blocks = adapter.blocks(model, "mixed")
        ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))
        for removed in (["layers.1"], ["layers.0.attn", "layers.2.mlp"]):
            gated, _, _ = gated_and_pruned(model, blocks, removed, ids)
            assert not torch.allclose(gated, model(ids).logits)  # the blocks mattered
    finally:
        pm.unregister(name="blockprune_olmo2")


def test_evaluate_example_runs_the_local_task(tmp_path, tiny_model_dir):
    stdout = run_example(
        "evaluate_lm_eval.py",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        "blockprune_mc",
        "--include-path",
        str(EXAMPLES / "lm_eval_tasks"),
        "--limit",
        "5",
    )
    line = next(line for line in stdout.splitlines() if line.startswith("blockprune_mc"))
    assert "acc=" in line and "samples=5" in line
