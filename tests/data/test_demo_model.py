"""Integration on the real SmolLM2-135M demo model (converted once from the bundled GGUF file)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import RELOAD

from optimum_blockprune.model.adapters.llama import LlamaAdapter
from optimum_blockprune.model.gates import Gates, removal_gates

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_path():
    from optimum_blockprune.data.demo_assets import demo_model_path

    return demo_model_path()


def test_demo_corpus_splits_are_disjoint():
    from optimum_blockprune.data.demo_assets import demo_texts

    calibration, heldout = demo_texts("calibration"), demo_texts("heldout")
    assert len(heldout) > 900 and len(calibration) > 8 * len(heldout)
    assert not set(calibration) & set(heldout)


def test_pruned_smollm2_reloads_with_stock_transformers_and_equal_logits(tmp_path, demo_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_path)
    model = AutoModelForCausalLM.from_pretrained(demo_path, dtype=torch.float32).eval()
    adapter = LlamaAdapter()
    removed = [3, 11, 17, 18, 24, 27]
    ids = tokenizer(
        ["The capital of France is", "Photosynthesis is the process"], return_tensors="pt", padding=True
    )
    with Gates(model, adapter, adapter.blocks(model)) as gates, torch.no_grad():
        gates.values = removal_gates(30, removed)
        gated = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
    adapter.remove_layers(model, removed)
    model.save_pretrained(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path), json.dumps(ids.input_ids[:1].tolist())],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing"] == [] and result["unexpected"] == [] and result["layers"] == 24
    assert (torch.tensor(result["logits"]) - gated[:1]).abs().max().item() <= 1e-4
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = ids.input_ids[:1]
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_cli_prunes_the_demo_model(tmp_path, demo_path):
    from pathlib import Path

    cli = str(Path(sys.executable).with_name("optimum-cli"))
    out = tmp_path / "pruned"
    proc = subprocess.run(
        [
            cli,
            "blockprune",
            "prune",
            "--model",
            "demo",
            "--remove",
            "2",
            "--num-samples",
            "2",
            "--seq-len",
            "32",
            "--top-k",
            "3",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "blockprune_report.json").read_text())
    assert len(report["removed"]) == 2 and report["parameters_after"] < report["parameters_before"]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 28
