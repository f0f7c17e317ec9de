"""The real ``optimum-cli blockprune`` entry point, in subprocesses, on a tiny model."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from helpers import CAL, CLI, assert_user_error, run

from optimum_blockprune.energy.model import EnergyModel


def test_blockprune_is_registered_with_optimum_cli():
    proc = subprocess.run([CLI, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "blockprune" in proc.stdout
    assert "llama" in run("analyze", "--list-adapters").stdout
    assert {"auto", "exhaustive", "sa", "tabu"} <= set(run("solve", "--list-solvers").stdout.split())


def test_prune_writes_a_loadable_model(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    proc = run(
        "prune",
        "--model",
        str(tiny_model_dir),
        "--calibration",
        str(text_file),
        *CAL,
        "--remove",
        "2",
        "--energy",
        "additive",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 blocks" in proc.stdout
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    report = json.loads((out / "blockprune_report.json").read_text())
    assert len(report["removed"]) == 2 and report["rounds"][0]["candidates"]


def test_analyze_then_solve(tmp_path, tiny_model_dir, text_file):
    energy_path = tmp_path / "e.safetensors"
    proc = run(
        "analyze",
        "--model",
        str(tiny_model_dir),
        "--calibration",
        str(text_file),
        *CAL,
        "--energy",
        "fisher",
        "--output",
        str(energy_path),
    )
    assert proc.returncode == 0, proc.stderr
    energy = EnergyModel.load(energy_path)
    assert energy.variant == "fisher" and len(energy) == 6
    out_json = tmp_path / "c.json"
    proc = run(
        "solve", "--energy-file", str(energy_path), "--remove", "2", "--top-k", "3", "--json", str(out_json)
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out_json.read_text())["candidates"]
    assert len(rows) == 3
    assert rows[0]["energy"] == pytest.approx(energy.energy(rows[0]["removed"]))
    assert [r["energy"] for r in rows] == sorted(r["energy"] for r in rows)


def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    base = [
        "prune",
        "--model",
        str(tiny_model_dir),
        "--calibration",
        str(text_file),
        *CAL,
        "--output",
        str(out),
    ]
    assert_user_error(run(*base, "--remove", "0"), "remove")
    assert_user_error(run(*base, "--remove", "6"), "choose between 1 and 5")
    assert_user_error(
        run("prune", "--model", str(tmp_path / "nowhere"), "--remove", "1", "--output", str(out)), "not found"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(
        run(*base[:3], "--calibration", str(empty), *CAL, "--output", str(out), "--remove", "1"), "empty"
    )
    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    assert_user_error(
        run(*base[:3], "--calibration", str(short), *CAL, "--output", str(out), "--remove", "1"), "too short"
    )
    assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    proc = run(*base[:-1], str(busy), "--remove", "1")
    assert_user_error(proc, "not empty")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    assert_user_error(run("solve", "--energy-file", str(corrupt), "--remove", "1"), "corrupt energy file")


def test_unknown_architecture_lists_registered_adapters(tmp_path, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    # OLMo-2 normalises after each branch: no built-in adapter, and the generic fallback refuses it
    # (OPT, the usual example, is covered by the plugin in plugins/).
    config = AutoConfig.for_model(
        "olmo2",
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path / "olmo2"
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # trained-size branch outputs (at init they are tiny and RMSNorm is near linear)
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    out = tmp_path / "out"
    proc = run("prune", "--model", str(path), "--remove", "1", "--output", str(out), *CAL)
    assert_user_error(proc, "no adapter supports architecture 'olmo2'")
    assert "llama" in proc.stderr and "not a plain residual addend" in proc.stderr
    assert not out.exists()
