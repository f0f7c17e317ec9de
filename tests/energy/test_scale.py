"""Scaling the analysis: data-parallel processes, resuming after kill -9, low precision, offload."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.checkpoint
from conftest import CORPUS
from helpers import ACCELERATE, CPU_ONLY, ENV, accelerate_cli

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.energy.partial import PartialRows, partial_path
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.pruner import BlockPruner


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "cal.txt"
    path.write_text("\n\n".join(CORPUS * 4))
    return path


def settings(text_file: Path, samples: int, seq_len: int, batch: int) -> dict:
    return dict(
        energy="fisher", calibration=str(text_file), num_samples=samples, seq_len=seq_len, batch_size=batch
    )


def cli_args(model: Path | None, cal: dict, output: Path) -> list[str]:
    args = ["analyze", "--energy", "fisher", "--output", str(output)]
    args += ["--model", "demo" if model is None else str(model)]
    for flag in ("calibration", "num_samples", "seq_len", "batch_size"):
        args += [f"--{flag.replace('_', '-')}", str(cal[flag])]
    return args


def python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "optimum_blockprune.cli", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = CPU_ONLY if cmd[0] == ACCELERATE else ENV
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_data_parallel_resume_gathers_rows_in_sample_order(tmp_path, tiny_model_dir, text_file):
    """Two gloo processes finish a partial file: 10 samples in batches of 3 (uneven shards)."""
    cal = settings(text_file, 10, 16, 3)
    out = tmp_path / "energy.safetensors"
    partial = partial_path(out)
    pruner = BlockPruner.from_pretrained(tiny_model_dir)
    reference = pruner.analyze(BlockPruneConfig(remove=1, **cal), checkpoint=partial)
    state = PartialRows.load(partial)
    assert state.complete
    state.done[1:] = False  # only batch 0 survived: processes 0, 1, 0 compute batches 1, 2, 3
    state.A[3:] = state.losses[3:] = 0.0
    state.save()
    proc = run(accelerate_cli(*cli_args(tiny_model_dir, cal, out)), tmp_path)
    assert (
        proc.stdout.count("written to") == 1 and "by 2 processes" in proc.stdout
    )  # only the main one writes
    assert not partial.exists()
    energy = EnergyModel.load(out)
    np.testing.assert_allclose(energy.sources["A"], reference.sources["A"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(energy.sources["losses"], reference.sources["losses"], rtol=1e-6)
    np.testing.assert_allclose(energy.couplings, reference.couplings, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_accelerate_two_processes_give_the_single_process_A_on_the_demo_model(tmp_path):
    cal = dict(energy="fisher", calibration="demo", num_samples=8, seq_len=64, batch_size=3)
    out = tmp_path / "energy.safetensors"
    assert "by 2 processes" in run(accelerate_cli(*cli_args(None, cal, out)), tmp_path).stdout
    single = BlockPruner.from_pretrained().analyze(BlockPruneConfig(remove=1, **cal))
    A = EnergyModel.load(out).sources["A"]
    assert A.shape == (8, 30) and np.abs(A).max() > 1e-3
    np.testing.assert_allclose(A, single.sources["A"], rtol=1e-4, atol=1e-6)


def test_kill_9_at_a_random_point_then_resume_gives_the_same_A(tmp_path, tiny_model_dir, text_file):
    cal = settings(text_file, 24, 16, 1)
    out = tmp_path / "energy.safetensors"
    partial = partial_path(out)
    rng = random.Random()
    target = rng.randint(2, 12)
    proc = subprocess.Popen(
        python_cli(*cli_args(tiny_model_dir, cal, out)),
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen: dict[int, float] = {}  # rows checkpointed -> when first seen
        while not seen or max(seen) < target:
            assert proc.poll() is None, "the analysis ended before it could be killed"
            if partial.exists():
                seen.setdefault(int(PartialRows.load(partial).done.sum()), time.perf_counter())
            time.sleep(0.001)
        batch_seconds = (seen[max(seen)] - seen[min(seen)]) / max(max(seen) - min(seen), 1)
        time.sleep(rng.uniform(0.0, batch_seconds))  # anywhere inside a batch or a checkpoint write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    done = int(PartialRows.load(partial).done.sum())
    assert target <= done < 24, done
    proc = run(python_cli(*cli_args(tiny_model_dir, cal, out)), tmp_path)
    assert "written to" in proc.stdout and not partial.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no stale temporaries
    resumed = EnergyModel.load(out)
    uninterrupted = BlockPruner.from_pretrained(tiny_model_dir).analyze(BlockPruneConfig(remove=1, **cal))
    assert np.array_equal(resumed.sources["A"], uninterrupted.sources["A"])
    assert np.array_equal(resumed.sources["losses"], uninterrupted.sources["losses"])


def test_partial_file_of_another_analysis_is_refused(tmp_path, tiny_model_dir, text_file):
    cal = settings(text_file, 4, 16, 2)
    out = tmp_path / "energy.safetensors"
    partial = partial_path(out)
    BlockPruner.from_pretrained(tiny_model_dir).analyze(BlockPruneConfig(remove=1, **cal), checkpoint=partial)
    with pytest.raises(BlockPruneError, match="corrupt energy file"):
        EnergyModel.load(partial)  # a partial file is never taken for a finished one
    other = {**cal, "batch_size": 1}
    proc = subprocess.run(
        python_cli(*cli_args(tiny_model_dir, other, out)),
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "batch_size" in errors[0] and "--no-resume" in errors[0], proc.stderr
    assert not out.exists() and PartialRows.load(partial).batch_size == 2
    pruner = BlockPruner.from_pretrained(tiny_model_dir)
    energy = pruner.analyze(BlockPruneConfig(remove=1, **other), checkpoint=partial, resume=False)
    assert energy.sources["A"].shape == (4, 6) and PartialRows.load(partial).batch_size == 1


def test_bfloat16_weights_give_finite_float64_gate_gradients(tiny_model_dir, text_file):
    config = BlockPruneConfig(remove=1, **settings(text_file, 6, 32, 3))
    A32 = BlockPruner.from_pretrained(tiny_model_dir).analyze(config).sources["A"]
    pruner = BlockPruner.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    A16 = pruner.analyze(config).sources["A"]
    assert A16.dtype == np.float64 and np.isfinite(A16).all()
    assert np.abs(A16 - A32).max() < 0.1 * np.abs(A32).max()  # the weights themselves are rounded
    assert np.corrcoef(A16.ravel(), A32.ravel())[0, 1] > 0.99
    params = list(pruner.model.parameters())
    assert all(p.dtype == torch.bfloat16 and p.grad is None and p.requires_grad for p in params)


@pytest.mark.parametrize("pack", [True, False])
def test_lm_head_in_chunks_gives_the_full_logits_loss_and_gradients(tokenizer, corpus, monkeypatch, pack):
    from conftest import tiny_model

    from optimum_blockprune.data.calibration import build_calibration
    from optimum_blockprune.energy import chunked_loss
    from optimum_blockprune.energy.gradients import gate_gradients
    from optimum_blockprune.model.adapters.llama import LlamaAdapter

    model, adapter = tiny_model("llama", 4), LlamaAdapter()
    blocks = adapter.blocks(model)
    texts = [t * (1 + i % 3) for i, t in enumerate(corpus[:8])]  # padding when unpacked
    data = build_calibration(tokenizer, texts, num_samples=4, seq_len=24, pack=pack)
    monkeypatch.setitem(chunked_loss.CHUNK_ELEMENTS, "cpu", 2 * 5 * 300)  # 5 positions of 2 samples
    A, losses = gate_gradients(model, adapter, blocks, data, batch_size=2)
    monkeypatch.setattr(chunked_loss, "last_hidden", lambda *args: None)  # the plain full-logits loss
    A_full, losses_full = gate_gradients(model, adapter, blocks, data, batch_size=2)
    assert np.abs(A).max() > 1e-3
    np.testing.assert_allclose(A, A_full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses, losses_full, rtol=1e-6)


@pytest.mark.parametrize("per_sample", [True, False])
def test_gate_gradients_are_summed_in_float32_under_bfloat16_activations(per_sample):
    from optimum_blockprune.model.gates import _scaled

    torch.manual_seed(0)
    hidden = torch.randn(3, 64, 128).to(torch.bfloat16)
    grad = torch.randn(3, 64, 128).to(torch.bfloat16)
    scale = torch.ones(3 if per_sample else (), requires_grad=True)
    out = _scaled(hidden, scale)
    assert out.dtype == torch.bfloat16 and torch.equal(out, hidden)
    out.backward(grad)
    exact = grad.double() * hidden.double()  # bfloat16 products are exact in float32
    exact = exact.flatten(1).sum(1) if per_sample else exact.sum()
    assert scale.grad.dtype == torch.float32
    torch.testing.assert_close(scale.grad.double(), exact, rtol=1e-5, atol=1e-3)
    rounded = (grad * hidden).flatten(1).sum(1) if per_sample else (grad * hidden).sum()
    assert (rounded.double() - exact).abs().max() > 10 * (scale.grad.double() - exact).abs().max()


def test_disk_offload_and_gradient_checkpointing_give_the_same_A(tmp_path, tiny_model_dir, text_file):
    config = BlockPruneConfig(remove=1, **settings(text_file, 6, 32, 3))
    reference = BlockPruner.from_pretrained(tiny_model_dir).analyze(config).sources["A"]
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    device_map.update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(6)})
    pruner = BlockPruner.from_pretrained(
        tiny_model_dir, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    assert pruner.model.hf_device_map["model.layers.1"] == "disk"
    for checkpointing in (False, True):
        A = pruner.analyze(config, gradient_checkpointing=checkpointing).sources["A"]
        np.testing.assert_allclose(A, reference, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in pruner.model.parameters())
    for layer in pruner.adapter.decoder_layers(pruner.model):  # the layers' own forward is back
        assert getattr(layer.forward, "func", None) is not torch.utils.checkpoint.checkpoint


def test_placement_mistakes_give_one_line_errors(tiny_model_dir):
    with pytest.raises(BlockPruneError, match="--offload-folder"):
        BlockPruner.from_pretrained(tiny_model_dir, device_map={"": "disk"})
    with pytest.raises(BlockPruneError, match="need a device map"):
        BlockPruner.from_pretrained(tiny_model_dir, max_memory={"cpu": "1GiB"})
    if not torch.cuda.is_available():
        with pytest.raises(BlockPruneError, match="needs CUDA"):
            BlockPruner.from_pretrained(tiny_model_dir, device_map="cuda:0")


def test_each_launched_process_gets_its_own_share_of_the_gpus():
    from optimum_blockprune.model.loading import parse_max_memory, rank_max_memory

    node = {**{g: 80 * 2**30 for g in range(8)}, "cpu": 1000 * 2**30}
    assert rank_max_memory(1, 4, available=node) == {2: 80 * 2**30, 3: 80 * 2**30, "cpu": 250 * 2**30}
    asked = parse_max_memory("0=70GiB, 1=72GiB,cpu=100GiB")
    assert asked == {0: "70GiB", 1: "72GiB", "cpu": "100GiB"}
    assert rank_max_memory(3, 4, asked, node) == {6: "70GiB", 7: "72GiB", "cpu": "100GiB"}
    assert rank_max_memory(0, 1, asked, node) == asked  # one process: the numbers are the node's
    with pytest.raises(BlockPruneError, match="count within each process's share"):
        rank_max_memory(0, 4, {2: "70GiB"}, node)
    with pytest.raises(BlockPruneError, match="at most 8"):
        rank_max_memory(0, 16, None, node)
    with pytest.raises(BlockPruneError, match="DEVICE=AMOUNT"):
        parse_max_memory("0:70GiB")
